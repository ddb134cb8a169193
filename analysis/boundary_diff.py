"""Two runs' boundaries, compared: how many boundaries both searched have the same value, and
every one that differs (with both runs' fit / OOM values); then, of those both searched with a
band, how many have the same safe value and band, and every one that differs.
Usage: python -m analysis.boundary_diff OLD_RESULTS_DIR NEW_RESULTS_DIR
"""

import csv
import sys
from pathlib import Path

from bench.spec import EXTRA_DEFAULTS


def _ok(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["boundary_key"]: r for r in csv.DictReader(f) if r["status"] == "ok"}


def main(old: Path, new: Path) -> None:
    same = differ = 0
    bands: list[bool] = []
    for path in sorted(old.glob("*/boundaries.csv")):
        theirs = new / path.parent.name / "boundaries.csv"
        if not theirs.exists():
            continue
        before, after = _ok(path), _ok(theirs)
        for key in sorted(before.keys() & after.keys()):
            a, b = before[key], after[key]
            if a.get("band_low") and b.get("band_low"):
                band_a, band_b = (_band(r) for r in (a, b))
                bands.append(band_a == band_b)
                if band_a != band_b:
                    print(f"{_name(path, a)}: safe, band {band_a} -> {band_b}")
            if a["max_value"] == b["max_value"]:
                same += 1
                continue
            differ += 1
            print(
                f"{_name(path, a)}: {a['max_value']} (then "
                f"{a['first_oom_value'] or '-'} OOMed) -> {b['max_value']} "
                f"({b['first_oom_value'] or '-'} OOMed)"
            )
    print(f"same: {same} of {same + differ}; differ: {differ}")
    if bands:
        print(f"with a band in both: same safe value and band {sum(bands)} of {len(bands)}")


def _name(path: Path, row: dict) -> str:
    later = "".join(  # the axes added after the first tables, where a row is not at their default
        f" {axis}={row[axis]}"
        for axis, default in EXTRA_DEFAULTS.items()
        if str(row.get(axis) or default) != str(default)
    )
    return (
        f"{path.parent.name} {row['axis']} {row['model']} r{row['lora_rank']} {row['dtype']} "
        f"ckpt={row['grad_ckpt']} seq={row['seq_len'] or '-'}{later}"
    )


def _band(row: dict) -> tuple[str, str, str]:
    return row.get("safe_value", ""), row["band_low"], row["band_high"]


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
