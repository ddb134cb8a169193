"""Boundaries searched again with every probe after a fresh load (`boundary --fresh`, as a user's
run starts), against the published ones, which leaned on kept models (analysis.repeats): per
boundary, the published value, safe value and inversions beside the fresh search's, then every
point both probed under the same cap, and whether its fit/OOM and peak agree.

    python -m analysis.fresh FRESH_DIR [results]

FRESH_DIR holds the fresh searches' profile folders (scripts/measure-bands.sh, jobs F*: DIR/devF,
DIR/devFG, ...; the folders under it are searched for boundaries.csv).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.results import read_results

KEPT = {"reused": " kept"}  # a published probe on a kept model is marked


def _rows(path: Path) -> tuple[dict, dict]:
    """A profile folder's ok boundaries by key, and its search probes that fit or ran out of
    memory by (boundary key, commit, trial key, cap): the latest."""
    bounds = {r["boundary_key"]: r for r in read_results(path / "boundaries.csv") if r["status"] == "ok"}
    probes = {}
    for p in read_results(path / "boundary-trials.csv"):
        if p.get("purpose") == "search" and p["status"] in ("ok", "oom"):
            probes[p["boundary_key"], p["git_commit"], p["trial_key"], p.get("mem_cap_gib")] = p
    return bounds, probes


def _own(probes: dict, row: dict) -> dict:
    """The probes of the search that recorded `row` (its key and commit), by (trial key, cap)."""
    at = (row["boundary_key"], row["git_commit"])
    return {k[2:]: p for k, p in probes.items() if k[:2] == at}


def _value(r: dict) -> str:
    safe, value = r.get("safe_value") or r["max_value"], r["max_value"]
    text = value if safe == value else f"{safe} ({value} fit)"
    return text + (f", OOM at {r['oom_below'].replace(';', ', ')}" if r.get("oom_below") else "")


def compare(fresh_dir: Path, results_dir: Path) -> list[str]:
    lines = [
        "| profile | setting | published | fresh loads | points both probed: differing (published/fresh) |"
    ]
    lines.append("| --- | --- | --- | --- | --- |")
    pairs = flips = 0
    gaps = []
    for folder in sorted(p.parent for p in Path(fresh_dir).glob("**/boundaries.csv")):
        new, new_probes = _rows(folder)
        old, old_probes = _rows(Path(results_dir) / folder.name)
        for key, r in sorted(new.items()):
            if key not in old:
                continue
            mine, theirs = _own(new_probes, r), _own(old_probes, old[key])
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
            setting = (
                f"{r['model']} r{r['lora_rank']} {r['dtype']} ckpt={r['grad_ckpt']} {r['recipe']} {r['axis']}"
            )
            lines.append(
                f"| {folder.name} | {setting} | {_value(old[key])} | {_value(r)}"
                + (f" ({kept} probes on a kept model)" if kept else "")
                + f" | {len(shared)}: {', '.join(differ) or 'none'} |"
            )
    lines.append(
        f"points probed both ways: {pairs}, fit/OOM differs in {flips}; fit twice {len(gaps)}, "
        f"the same peak in {sum(g == 0 for g in gaps)}, at most {max(gaps, default=0):.3f} GiB apart"
    )
    return lines


if __name__ == "__main__":
    print("\n".join(compare(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "results"))))
