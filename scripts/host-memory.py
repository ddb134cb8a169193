"""Host memory during a call, from `free -m` sampled beside it (scripts/measure-bands.sh writes
DIR/logs/memN.txt: one line per sample, `HH:MM:SS Mem: total used free shared buff/cache
available`, in MiB): per file, the samples, the most used and the least available, in GiB.

    python3 scripts/host-memory.py archive/hostmem-58b6299/mem*.txt
"""

import sys
from pathlib import Path

GIB = 1024  # MiB


def summary(path: Path) -> str:
    samples = [line.split() for line in path.read_text().splitlines() if "Mem:" in line.split()]
    total = int(samples[0][2])
    used = max(int(s[3]) for s in samples)
    available = min(int(s[7]) for s in samples)
    return (
        f"{path.name}: {len(samples)} samples, {samples[0][0]}-{samples[-1][0]}; "
        f"used at most {used / GIB:.1f} GiB of {total / GIB:.1f}, "
        f"available at least {available / GIB:.1f} GiB"
    )


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summary(Path(name)))
