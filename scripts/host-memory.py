"""Host memory during a call, from `free -m` sampled beside it (scripts/measure-bands.sh writes
DIR/logs/memN.txt: one line per sample, `HH:MM:SS Mem: total used free shared buff/cache
available`, in MiB): per file, the samples, the most used and the least available, in GiB. From
its cgroup samples (DIR/logs/cgN.txt: `HH:MM:SS memory.current: BYTES memory.max: LIMIT
memory.events: ... oom_kill N ...`, cgroup v2): the most in use (page cache included), the limit
and the OOM kills the last sample counts.

    python3 scripts/host-memory.py archive/hostmem-58b6299/mem*.txt
    python3 scripts/host-memory.py archive/bands-0e64b62/cg*.txt
"""

import re
import sys
from pathlib import Path

GIB = 1024  # MiB


def cgroup(path: Path) -> str:
    lines = [line for line in path.read_text().splitlines() if "memory.current:" in line]
    used = max(int(re.search(r"memory\.current: (\d+)", line)[1]) for line in lines) / GIB**3
    limit = re.search(r"memory\.max: (\S+)", lines[-1])
    kills = re.search(r"\boom_kill (\d+)", lines[-1])
    return (
        f"{path.name}: {len(lines)} cgroup samples; in use at most {used:.1f} GiB, "
        f"limit {limit[1] if limit else '?'}; OOM kills {kills[1] if kills else 'not counted'}"
    )


def summary(path: Path) -> str:
    if path.name.startswith("cg"):
        return cgroup(path)
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
