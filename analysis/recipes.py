"""The recipes side by side at the points where more than one ran: peak reserved memory, the SDPA
kernel that ran, and the trial's wall time, from any folder of trial or probe CSVs.

    python -m analysis.recipes archive/recipes-8b49fe8 [--profile t4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.results import read_results, variant

POINT = ("profile", "model", "dtype", "grad_ckpt", "lora_rank", "batch_size", "seq_len", "padding")


def points(root: Path, profile: str | None = None) -> dict[tuple, dict[str, dict]]:
    """{point: {recipe: row}} over every trials*.csv and boundary-trials.csv under `root`,
    for points that more than one recipe ran (the last row of a recipe at a point wins)."""
    found: dict[tuple, dict[str, dict]] = {}
    for path in sorted(root.rglob("*.csv")):
        if not (path.name.startswith("trials") or path.name == "boundary-trials.csv"):
            continue
        for row in read_results(path):
            if profile and row["profile"] != profile or row["status"] not in ("ok", "oom"):
                continue
            if variant(row, ("recipe", "padding", "lengths", "eval_batch_size", "eval_new_tokens")):
                continue  # another allocator or workload: not the same point
            found.setdefault(tuple(row.get(k) or "" for k in POINT), {})[row.get("recipe") or "peft"] = row

    def order(point):
        return (*point[:4], int(point[4]), int(point[5]), int(point[6]), point[7])

    return {point: found[point] for point in sorted(found, key=order) if len(found[point]) > 1}


HEADER = ("profile", "model", "dtype", "ckpt", "r", "batch x tokens", "padding", "recipe", "status")
MEASURED = ("peak reserved GiB", "SDPA", "trial s")


def render(root: Path, profile: str | None = None) -> str:
    columns = (*HEADER, *MEASURED)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for point, by in points(root, profile).items():
        prof, model, dtype, ckpt, rank, batch, seq, padding = point
        for recipe, row in sorted(by.items()):
            cells = [
                prof,
                model,
                dtype,
                ckpt,
                rank,
                f"{batch} x {seq}",
                padding or "none",
                recipe,
                row["status"],
            ]
            if row["status"] == "ok":
                peak, wall = float(row["peak_reserved_gib"]), float(row["trial_wall_s"])
                cells += [f"{peak:.2f}", row.get("sdpa_backend_used") or "", f"{wall:.0f}"]
            else:
                cells += ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--profile")
    args = parser.parse_args()
    print(render(args.root, args.profile), end="")


if __name__ == "__main__":
    main()
