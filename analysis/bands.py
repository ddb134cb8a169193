"""How far the published boundaries move when the card has a little less or more memory than the
profile says: every boundary searched with `--band` (its row's band_low and band_high), how far
each end is from the boundary, and whether a safe-value scan found a value below it that ran out
of memory; then, per profile, how many boundaries have no band yet; then what the searches' own
probes already say about a band's lower end (floors, below); then the probes a later run ran
again, and whether they agree (repeats, by_load).

    python -m analysis.bands results
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import median

from analysis.repeats import _float, _int, by_load, inversion_loads, kept_ends, repeats
from bench.boundary.search import band_bounds
from bench.results import read_results

BAND_GIB = 0.3  # the band every published one was searched with (--band 0.3)


def setting(r: dict) -> str:
    """A boundary row's setting, as the analyses name it."""
    return f"{r['model']} r{r['lora_rank']} {r['dtype']} ckpt={r['grad_ckpt']} {r['recipe']} {r['axis']}"


def banded(results_dir: Path) -> tuple[list[dict], dict[tuple[str, bool], int]]:
    """The ok boundaries that have a band (profile, the row's setting, value, safe value, band,
    each end's move as a share of the value) and the ok boundaries without one, per profile and
    whether at 0 (nothing fit: a band would say whether 0.3 GiB more lets the smallest value fit)."""
    rows, missing = [], {}
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        for r in read_results(path):
            value, low, high = (_int(r.get(k)) for k in ("max_value", "band_low", "band_high"))
            if r["status"] == "ok" and low is None and high is None:
                missing[path.parent.name, not value] = missing.get((path.parent.name, not value), 0) + 1
            if r["status"] != "ok" or not value or (low is None and high is None):
                continue
            rows.append(
                {
                    "profile": path.parent.name,
                    "setting": setting(r),
                    "kind": f"{r['recipe']} {r['axis']}",  # the moves are summed per profile and kind
                    "value": value,
                    "safe": _int(r.get("safe_value")),
                    "low": low,
                    "high": high,
                    "down": None if low is None else (value - low) / value,
                    "up": None if high is None else (high - value) / value,
                    "inversions": r.get("oom_below") or "",
                }
            )
    return rows, missing


def at_zero(results_dir: Path) -> tuple[int, dict[str, int]]:
    """The ok boundaries at 0 (not even the smallest value fit) that have a band: how many, and
    per profile how many of them fit the smallest value with the cap --band GiB higher."""
    total, up = 0, {}
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        for r in read_results(path):
            if r["status"] == "ok" and _int(r.get("max_value")) == 0 and _int(r.get("band_high")) is not None:
                total += 1
                if _int(r["band_high"]):
                    up[path.parent.name] = up.get(path.parent.name, 0) + 1
    return total, up


def floors(results_dir: Path, band_gib: float = BAND_GIB) -> list[dict]:
    """Per ok boundary above 0 of an emulated card, the floor of its band's lower end, from its
    own search's probes, at no GPU cost: what a band's search takes as known to fit under the cap
    less `band_gib` (bench.boundary.search.band_bounds, which says why), the largest value at or
    below the boundary whose probe fit with its whole trial's peak reserved at or below that
    cap. 0: no probe was that low. Each row: profile, boundary_key, axis, value, floor, band_low
    (None: not banded)."""
    out = []
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        probes = path.with_name("boundary-trials.csv")
        if not probes.exists():
            continue
        by_key: dict[str, list[dict]] = {}
        for p in read_results(probes):
            if p.get("purpose") == "search" and p["status"] == "ok" and _float(p.get("mem_cap_gib")):
                by_key.setdefault(p["boundary_key"], []).append(p)
        for r in read_results(path):
            value = _int(r.get("max_value"))
            if r["status"] != "ok" or not value or r["boundary_key"] not in by_key:
                continue
            axis, probed = r["axis"], by_key[r["boundary_key"]]
            fits = {_int(p[axis]): {"peak_reserved_gib": _float(p.get("peak_reserved_gib"))} for p in probed}
            cap = _float(probed[0]["mem_cap_gib"])  # the card's: a search probes at its cap only
            floor, _ = band_bounds({"fits": fits, "lo": value, "hi": None}, cap, cap - band_gib)
            out.append(
                {
                    "profile": path.parent.name,
                    "boundary_key": r["boundary_key"],
                    "axis": axis,
                    "value": value,
                    "floor": floor,
                    "band_low": _int(r.get("band_low")),
                }
            )
    return out


def rule_checks(results_dir: Path, band_gib: float = BAND_GIB) -> dict[str, list[int]]:
    """The three rules a band's search skips probes by (bench.boundary.search.band_bounds),
    checked against every band probe that ran a point its boundary's search had run at the card's
    cap: [pairs, exceptions] for an OOM there running out under the lower cap too, a fit there
    fitting under the higher cap, and a fit whose peak stayed `band_gib` under the cap fitting
    under the lower cap."""
    out = {"oom, lower cap": [0, 0], "fit, higher cap": [0, 0], "fit under cap less band, lower cap": [0, 0]}
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        probes = path.with_name("boundary-trials.csv")
        axes = {r["boundary_key"]: r["axis"] for r in read_results(path)}
        by = {}  # (boundary, purpose, units) -> status, peak, cap
        for p in read_results(probes) if probes.exists() else []:
            axis = axes.get(p["boundary_key"])
            if axis and p["status"] in ("ok", "oom"):
                units = _int(p[axis])
                by[p["boundary_key"], p.get("purpose"), units] = (
                    p["status"],
                    _float(p.get("peak_reserved_gib")) or 0,
                    _float(p.get("mem_cap_gib")),
                )
        for (key, purpose, units), (status, peak, cap) in by.items():
            if purpose != "search" or cap is None:
                continue
            low, high = by.get((key, "band_low", units)), by.get((key, "band_high", units))
            for rule, other, expect, applies in (
                ("oom, lower cap", low, "oom", status == "oom"),
                ("fit, higher cap", high, "ok", status == "ok"),
                ("fit under cap less band, lower cap", low, "ok", status == "ok" and peak <= cap - band_gib),
            ):
                if applies and other is not None:
                    out[rule][0] += 1
                    out[rule][1] += other[0] != expect
    return out


def _floor_lines(rows: list[dict], band_gib: float = BAND_GIB) -> list[str]:
    """The floors checked against the bands measured, then what they give the boundaries without one."""
    banded_rows = [r for r in rows if r["band_low"] is not None]
    above = sum(r["floor"] > r["band_low"] for r in banded_rows)
    equal = sum(r["floor"] == r["band_low"] for r in banded_rows)
    lines = [
        f"floors ({band_gib:g} GiB less, from the searches' own probes): against the {len(banded_rows)} "
        f"bands measured, {equal} equal to band_low, {above} above it"
    ]
    for profile in sorted({r["profile"] for r in rows}):
        part = [r for r in rows if r["profile"] == profile and r["band_low"] is None]
        if part:
            kept = sum(r["floor"] == r["value"] for r in part)
            none = sum(r["floor"] == 0 for r in part)
            lines.append(
                f"  {profile}, {len(part)} without a band: {kept} keep their value, "
                f"{len(part) - kept - none} have a floor below it, {none} none"
            )
    return lines


def _moves(rows: list[dict]) -> str:
    """How far the band's ends are from the boundaries of `rows` (medians, the worst down)."""
    downs = [r["down"] for r in rows if r["down"] is not None]
    ups = [r["up"] for r in rows if r["up"] is not None]
    noun = "boundary" if len(rows) == 1 else "boundaries"
    return (
        f"{len(rows)} {noun} with a band: down median {median(downs):.1%}, worst "
        f"{max(downs):.1%}; up median {median(ups):.1%}"
    )


def main(results_dir: Path) -> None:
    rows, missing = banded(results_dir)
    print("| profile | setting | boundary | safe | band | down | up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        down = "-" if r["down"] is None else f"{r['down']:.1%}"
        up = "-" if r["up"] is None else f"{r['up']:.1%}"
        print(
            f"| {r['profile']} | {r['setting']} | {r['value']} | {r['safe']} | "
            f"{r['low']}-{r['high']} | {down} | {up} |"
        )
    if rows:
        print(f"\n{_moves(rows)}; {sum(r['safe'] is not None and r['safe'] < r['value'] for r in rows)} "
              "with a safe value below the boundary")  # fmt: skip
        print("per profile, recipe and axis:")  # a recipe's memory is its own: not pooled with peft's
        for profile, kind in sorted({(r["profile"], r["kind"]) for r in rows}):
            part = [r for r in rows if r["profile"] == profile and r["kind"] == kind]
            print(f"  {profile} {kind}: {_moves(part)}")
    counts = [f"{p} {n}" + (" at 0" if zero else "") for (p, zero), n in sorted(missing.items())]
    print("without a band:", ", ".join(counts) or "none")
    total, up = at_zero(results_dir)
    print(
        f"at 0 with a band: {total}; the smallest value fits with {BAND_GIB} GiB more in {sum(up.values())} "
        f"({', '.join(f'{p} {n}' for p, n in sorted(up.items()))})"
    )
    print("\n".join(_floor_lines(floors(results_dir))))
    pairs, flipped = repeats(results_dir)
    print(
        f"probes run again by a later run (same point, cap and purpose): {pairs}, the same fit/OOM "
        f"in {pairs - len(flipped)}" + "".join(f"\n  flipped: {line}" for line in flipped)
    )
    names = {"fresh": "both after a fresh load", "kept": "one or both on a kept model"}
    for kind, k in by_load(results_dir).items():
        print(
            f"  {names[kind]}: {k['pairs']} pairs, {k['flips']} flipped; fit twice {k['fit']}, "
            f"the same peak in {k['equal']}, at most {k['max']:.3f} GiB apart"
        )
    margin = by_load(results_dir)["kept"]["max"]
    total, kept, near = kept_ends(results_dir, margin)
    print(
        f"  boundaries above 0 with an end on a kept model: {kept} of {total}; its fitting end on a kept "
        f"model within {margin:.3f} GiB of the cap: {near}"
    )
    n, loads = inversion_loads(results_dir)
    print(
        f"values below a boundary that ran out of memory (safe-value scans): {sum(loads.values())} in {n} "
        "boundaries; the worker had its model: " + ", ".join(f"{k} {v}" for k, v in sorted(loads.items()))
    )
    checks = rule_checks(results_dir)
    print(
        "the band search's rules, against band probes that repeated a point: "
        + "; ".join(f"{rule}: {pairs} pairs, {bad} exceptions" for rule, (pairs, bad) in checks.items())
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
