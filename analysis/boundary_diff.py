"""Two runs' boundaries, compared: how many boundaries both searched have the same value, and
every one that differs (with both runs' fit / OOM values).
Usage: python -m analysis.boundary_diff OLD_RESULTS_DIR NEW_RESULTS_DIR
"""

import csv
import sys
from pathlib import Path


def _ok(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["boundary_key"]: r for r in csv.DictReader(f) if r["status"] == "ok"}


def main(old: Path, new: Path) -> None:
    same = differ = 0
    for path in sorted(old.glob("*/boundaries.csv")):
        theirs = new / path.parent.name / "boundaries.csv"
        if not theirs.exists():
            continue
        before, after = _ok(path), _ok(theirs)
        for key in sorted(before.keys() & after.keys()):
            a, b = before[key], after[key]
            if a["max_value"] == b["max_value"]:
                same += 1
                continue
            differ += 1
            print(
                f"{path.parent.name} {a['axis']} {a['model']} r{a['lora_rank']} {a['dtype']} "
                f"ckpt={a['grad_ckpt']} seq={a['seq_len'] or '-'}: {a['max_value']} (then "
                f"{a['first_oom_value'] or '-'} OOMed) -> {b['max_value']} "
                f"({b['first_oom_value'] or '-'} OOMed)"
            )
    print(f"same: {same} of {same + differ}; differ: {differ}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
