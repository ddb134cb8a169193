"""Boundaries searched again, with every probe after a fresh load (`boundary --fresh`, as a user's
run starts) or not, against the published ones, which leaned on kept models (analysis.repeats):
per boundary, the published value, safe value and inversions beside the new search's, and the
points both probed under the same cap whose fit/OOM differs; then, over the published search and
every run given, each point whose fit/OOM or peak differs from run to run.

    python -m analysis.fresh RUN_DIR... [--results results]

A RUN_DIR holds a search's profile folders (scripts/measure-bands.sh, jobs F*: DIR/devF,
DIR/devFG, ...); the folders under it are searched for boundaries.csv.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from analysis.bands import setting
from analysis.repeats import _search_probes
from bench.results import read_results

KEPT = {"reused": " kept"}  # a published probe on a kept model is marked


def _rows(path: Path) -> tuple[dict, dict]:
    """A profile folder's ok boundaries by key, and its search probes that fit or ran out of
    memory (the latest per boundary, commit, cap and value)."""
    bounds = {r["boundary_key"]: r for r in read_results(path / "boundaries.csv") if r["status"] == "ok"}
    return bounds, _search_probes(path / "boundaries.csv", done_only=True)


def _own(probes: dict, row: dict) -> dict:
    """The probes of the search that recorded `row` (its key and commit), by (cap, value)."""
    at = (row["boundary_key"], row["git_commit"])
    return {k[2:]: p for k, p in probes.items() if k[:2] == at}


def _value(r: dict) -> str:
    safe, value = r.get("safe_value") or r["max_value"], r["max_value"]
    text = value if safe == value else f"{safe} ({value} fit)"
    return text + (f", OOM at {r['oom_below'].replace(';', ', ')}" if r.get("oom_below") else "")


def _outcome(p: dict) -> str:
    return "oom" if p["status"] == "oom" else f"ok {float(p['peak_reserved_gib']):.2f}"


def compare(run_dirs: list[Path], results_dir: Path) -> list[str]:
    lines = [
        "| profile | setting | published | searched again | points both probed: differing (published/again) |"
    ]
    lines.append("| --- | --- | --- | --- | --- |")
    pairs = flips = 0
    gaps = []
    seen: dict[tuple, dict[str, str]] = {}  # (profile, setting, value, cap) -> outcome by search
    for folder in sorted(p.parent for d in run_dirs for p in Path(d).glob("**/boundaries.csv")):
        new, new_probes = _rows(folder)
        old, old_probes = _rows(Path(results_dir) / folder.name)
        for key, r in sorted(new.items()):
            if key not in old:
                continue
            mine, theirs = _own(new_probes, r), _own(old_probes, old[key])
            name = setting(r)
            for search, probes in (("published", theirs), (str(folder), mine)):
                for (cap, _), p in probes.items():
                    seen.setdefault((folder.name, name, int(float(p[r["axis"]])), cap), {})[search] = (
                        _outcome(p)
                    )
            kept = sum(p.get("model_load") == "reused" for p in mine.values())
            shared = [(theirs[k], p) for k, p in sorted(mine.items()) if k in theirs]
            differ = [
                f"{p[r['axis']]} {a['status']}{KEPT.get(a.get('model_load'), '')}/{p['status']}"
                for a, p in shared
                if a["status"] != p["status"]
            ]
            pairs, flips = pairs + len(shared), flips + len(differ)
            gaps += [
                abs(float(a["peak_reserved_gib"]) - float(p["peak_reserved_gib"]))
                for a, p in shared
                if a["status"] == p["status"] == "ok"
            ]
            lines.append(
                f"| {folder.name} | {name} | {_value(old[key])} | {_value(r)}"
                + (f" ({kept} probes on a kept model)" if kept else "")
                + f" | {len(shared)}: {', '.join(differ) or 'none'} |"
            )
    lines.append(
        f"points probed both ways: {pairs}, fit/OOM differs in {flips}; fit twice {len(gaps)}, "
        f"the same peak in {sum(g == 0 for g in gaps)}, at most {max(gaps, default=0):.3f} GiB apart"
    )
    varied = {k: v for k, v in sorted(seen.items()) if len(set(v.values())) > 1}
    lines.append(f"points whose outcome (fit and peak reserved, GiB) differs between searches: {len(varied)}")
    for (profile, name, value, cap), by_search in varied.items():
        counts = Counter(by_search.values())
        lines.append(
            f"  {profile} {name} {value} at {cap} GiB: "
            + ", ".join(f"{o} x{n}" for o, n in sorted(counts.items()))
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    print("\n".join(compare(args.runs, args.results)))
