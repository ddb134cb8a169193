"""What a process holds on the GPU beside PyTorch's reserved memory (the CUDA context and the
kernel modules it has loaded), from rows measured natively (`emulated` false): NVML's
per-process peak minus the allocator's peak reserved, per profile.

    python -m analysis.context results
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import median

from bench.results import read_results
from bench.verify import read_checked


def overhead(results_dir: Path) -> dict[str, tuple[float, int]]:
    """Per profile with native ok rows (its boundary probes and verify runs): the median of
    nvml_process_max_gib - peak_reserved_gib, and how many rows."""
    out = {}
    for folder in sorted(p for p in Path(results_dir).iterdir() if p.is_dir()):
        gaps = [
            float(r["nvml_process_max_gib"]) - float(r["peak_reserved_gib"])
            for name in ("boundary-trials.csv", "verify.csv", "trials.csv")
            if (folder / name).exists()
            for r in (read_checked if name == "verify.csv" else read_results)(folder / name)
            if r.get("emulated", "").lower() == "false"
            and r["status"] == "ok"
            and r.get("nvml_process_max_gib")
            and r.get("peak_reserved_gib")
        ]
        if gaps:
            out[folder.name] = (median(gaps), len(gaps))
    return out


if __name__ == "__main__":
    for profile, (gib, rows) in overhead(Path(sys.argv[1] if len(sys.argv) > 1 else "results")).items():
        print(f"{profile}: {gib:.2f} GiB beside PyTorch's reserved memory (median of {rows} native rows)")
