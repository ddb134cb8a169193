"""The probes a later run ran again (same point, cap and purpose), and whether they agree
(repeats), split by how each worker had its model: right after a load, or kept from the probe
before (by_load, kept_ends, inversion_loads); `python -m analysis.bands results` prints them.
"""

from __future__ import annotations

from pathlib import Path

from bench.results import read_results


def _int(value) -> int | None:
    return int(float(value)) if str(value or "") not in ("", "None") else None


def _float(value) -> float | None:
    return float(value) if str(value or "") not in ("", "None") else None


def _repeated(results_dir: Path):
    """Each point a later run probed again (same point, cap and purpose; merged files keep both
    rows, scripts/merge-results.py): its profile, the earliest row and the latest."""
    for probes in sorted(Path(results_dir).glob("*/boundary-trials.csv")):
        groups: dict[tuple, list[dict]] = {}
        for p in read_results(probes):
            if p["status"] in ("ok", "oom"):
                key = (p["boundary_key"], p["trial_key"], p.get("purpose"), p.get("mem_cap_gib"))
                groups.setdefault(key, []).append(p)
        for rows in groups.values():
            if len(rows) >= 2:
                first, last = sorted(rows, key=lambda r: r["timestamp_utc"])[:: len(rows) - 1]
                yield probes.parent.name, first, last


def repeats(results_dir: Path) -> tuple[int, list[str]]:
    """Probes a later run ran again at the same point, cap and purpose (a band's search re-runs
    its boundary's): how many, and those whose fit/OOM differs, the earliest row against the
    latest, each named with its two commits."""
    pairs, flipped = 0, []
    for profile, first, last in _repeated(results_dir):
        pairs += 1
        if first["status"] != last["status"]:
            flipped.append(
                f"{profile} {first['model']} r{first['lora_rank']} {first['dtype']} "
                f"ckpt={first['grad_ckpt']} {first.get('recipe') or 'peft'} seq {first['seq_len']} "
                f"batch {first['batch_size']} at {first['mem_cap_gib']} GiB: {first['status']} "
                f"({first['git_commit'][:7]}) then {last['status']} ({last['git_commit'][:7]})"
            )
    return pairs, flipped


def by_load(results_dir: Path) -> dict[str, dict]:
    """The repeated probes (_repeated) by how each of the two had its model: both right after a
    load (`loaded`, or `preloaded` by a spare), or one or both on a model its worker kept from the
    probe before (`reused`: trial.ModelSlot.restore found the allocator back in the load's
    state). Per kind: pairs, fit/OOM flips, pairs that fit twice, with equal peak reserved, and
    the largest peak difference (GiB)."""
    out = {k: {"pairs": 0, "flips": 0, "fit": 0, "equal": 0, "max": 0.0} for k in ("fresh", "kept")}
    for _, first, last in _repeated(results_dir):
        kind = out["kept" if "reused" in (first.get("model_load"), last.get("model_load")) else "fresh"]
        kind["pairs"] += 1
        kind["flips"] += first["status"] != last["status"]
        if first["status"] == last["status"] == "ok":
            gap = abs(float(first["peak_reserved_gib"]) - float(last["peak_reserved_gib"]))
            kind["fit"] += 1
            kind["equal"] += gap == 0
            kind["max"] = max(kind["max"], gap)
    return out


def kept_ends(results_dir: Path, margin_gib: float) -> tuple[int, int, int]:
    """The ok boundaries above 0 (their search's own probes at the boundary and the next step,
    same commit and cap): how many, how many with either end run on a kept model (`reused`), and
    how many whose fitting end ran on a kept model within `margin_gib` of the cap (where
    by_load's kept/fresh differences could move them a step)."""
    total = kept = near = 0
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        ends = _search_probes(path)
        for r in read_results(path):
            if r["status"] != "ok" or not _int(r.get("max_value")):
                continue
            at = (r["boundary_key"], r["git_commit"], r.get("mem_cap_gib"))
            fit, oom = ends.get((*at, str(r["max_value"]))), ends.get((*at, str(r["first_oom_value"])))
            if fit is None:
                continue
            total += 1
            kept += "reused" in (fit.get("model_load"), (oom or {}).get("model_load"))
            cap = _float(r.get("mem_cap_gib"))
            near += (
                fit.get("model_load") == "reused"
                and cap is not None
                and (float(fit["peak_reserved_gib"]) >= cap - margin_gib)
            )
    return total, kept, near


def inversion_loads(results_dir: Path) -> tuple[int, dict[str, int]]:
    """The values below a boundary that ran out of memory (oom_below, its safe-value scan's): how
    many boundaries have one, and the values by how the search's own probe there had its model."""
    boundaries, loads = 0, {}
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        rows = [r for r in read_results(path) if r["status"] == "ok" and r.get("oom_below")]
        ends = _search_probes(path) if rows else {}
        for r in rows:
            boundaries += 1
            at = (r["boundary_key"], r["git_commit"], r.get("mem_cap_gib"))
            for value in r["oom_below"].split(";"):
                load = ends.get((*at, value), {}).get("model_load") or "not found"
                load = "kept" if load == "reused" else "fresh" if load in ("loaded", "preloaded") else load
                loads[load] = loads.get(load, 0) + 1
    return boundaries, loads


def _search_probes(boundaries_csv: Path, done_only: bool = False) -> dict[tuple, dict]:
    """The latest search probe (boundary-trials.csv beside it) per boundary, commit, cap and value
    (`done_only`: the latest that fit or ran out of memory)."""
    ends = {}
    for p in read_results(boundaries_csv.with_name("boundary-trials.csv")):
        if p.get("purpose") == "search" and (not done_only or p["status"] in ("ok", "oom")):
            axis = p["boundary_key"].split("|", 1)[0]
            ends[(p["boundary_key"], p["git_commit"], p.get("mem_cap_gib"), str(p[axis]))] = p
    return ends
