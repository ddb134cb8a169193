"""Merge what a run wrote into a copy of results/ (`--results-dir COPY`, so that it could share
the GPU with another run holding the same profiles' results locks) back into results/: the rows
of COPY that are new or changed against the committed files, by key (a boundary's row replaces
the committed row of its key; probe rows and run lines are added when not already there, so a
point the copy probed again keeps the committed probe row beside the new one: an earlier run's
and a later run's measurement of it, which `python -m analysis.bands results` compares).
How some of the published rows were gathered (docs/published-results.md says which).

    python scripts/merge-results.py COPY [PROFILE...]
"""

import csv
import subprocess
import sys
from pathlib import Path


def committed(path: Path) -> str:
    done = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines(keepends=True))) if text else []


def merge_csv(source: Path, target: Path, key: str | None) -> int:
    base = {tuple(r.items()) for r in rows(committed(target))}
    new = [r for r in rows(source.read_text()) if tuple(r.items()) not in base]
    merged = rows(target.read_text()) if target.exists() else []
    if key:
        index = {r[key]: i for i, r in enumerate(merged)}
        for r in new:
            if r[key] in index:
                merged[index[r[key]]] = r
            else:
                index[r[key]] = len(merged)
                merged.append(r)
    else:
        have = {tuple(r.items()) for r in merged}
        merged += [r for r in new if tuple(r.items()) not in have]
    with open(source, newline="") as f:
        header = csv.DictReader(f).fieldnames  # the run's schema: it migrated what it appended to
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(merged)
    return len(new)


def main(source_dir: Path, profiles: list[str]) -> None:
    for profile in profiles or sorted(p.name for p in source_dir.iterdir() if p.is_dir()):
        for name, key in (("boundaries.csv", "boundary_key"), ("boundary-trials.csv", None)):
            source, target = source_dir / profile / name, Path("results") / profile / name
            if source.exists():
                print(f"{profile}/{name}: {merge_csv(source, target, key)} rows new or changed")
        source, target = (
            source_dir / profile / "boundary-runs.jsonl",
            Path("results") / profile / "boundary-runs.jsonl",
        )
        if source.exists():
            seen = set(committed(target).splitlines()) | set(
                target.read_text().splitlines() if target.exists() else []
            )
            added = [line for line in source.read_text().splitlines() if line not in seen]
            with open(target, "a") as f:
                f.writelines(line + "\n" for line in added)
            print(f"{profile}/boundary-runs.jsonl: {len(added)} runs added")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
