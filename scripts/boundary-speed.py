#!/usr/bin/env python3
"""How fast the boundary search is, from the files the run itself wrote.

For each results/<profile>/: trials per boundary, per-trial overhead beyond the measured steps
(probe wall time as the sweep saw it, minus the timed steps), and the wall time of the runs
(boundary-runs.jsonl; a run stopped by a time limit writes no line, so its time is missing).
Usage: scripts/boundary-speed.py [RESULTS_DIR]
"""

import csv
import json
import statistics
import sys
from pathlib import Path


def main(results: Path) -> None:
    print(
        "| profile | boundaries searched | search trials / boundary | verify trials | "
        "median probe wall (s) | median overhead beyond measured steps, fitting probes (s) | "
        "runs logged: boundaries, wall (min) |"
    )
    print("|" + " --- |" * 7)
    for path in sorted(results.glob("*/boundaries.csv")):
        with open(path, newline="") as f:
            bounds = [r for r in csv.DictReader(f) if r["status"] == "ok"]
        with open(path.with_name("boundary-trials.csv"), newline="") as f:
            probes = list(csv.DictReader(f))
        searched = [int(b["search_trials"]) for b in bounds]
        verify = sum(p["purpose"] == "verify" for p in probes)
        walls = [float(p["probe_wall_s"]) for p in probes]
        overhead = [
            float(p["probe_wall_s"]) - sum(map(float, p["step_times_s"].split(";")))
            for p in probes
            if p["status"] == "ok" and p["step_times_s"]
        ]
        runs_file = path.with_name("boundary-runs.jsonl")
        runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
        logged = (
            f"{sum(r['boundaries'] for r in runs)}, {sum(r['wall_s'] for r in runs) / 60:.1f}"
            if runs
            else "none (stopped by a time limit)"
        )
        print(
            f"| {path.parent.name} | {len(bounds)} | {statistics.mean(searched):.2f} | {verify} | "
            f"{statistics.median(walls):.1f} | {statistics.median(overhead):.1f} | {logged} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
