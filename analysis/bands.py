"""How far the published boundaries move when the card has a little less or more memory than the
profile says: every boundary searched with `--band` (its row's band_low and band_high), how far
each end is from the boundary, and whether a safe-value scan found a value below it that ran out
of memory; then, per profile, how many boundaries have no band yet.

    python -m analysis.bands results
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import median

from bench.results import read_results


def _int(value) -> int | None:
    return int(float(value)) if str(value or "") not in ("", "None") else None


def banded(results_dir: Path) -> tuple[list[dict], dict[str, int]]:
    """The ok boundaries that have a band (profile, the row's setting, value, safe value, band,
    each end's move as a share of the value) and, per profile, the ok boundaries without one."""
    rows, missing = [], {}
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        for r in read_results(path):
            value = _int(r.get("max_value"))
            if r["status"] != "ok" or not value:
                continue
            low, high = _int(r.get("band_low")), _int(r.get("band_high"))
            if low is None and high is None:
                missing[path.parent.name] = missing.get(path.parent.name, 0) + 1
                continue
            rows.append(
                {
                    "profile": path.parent.name,
                    "setting": f"{r['model']} r{r['lora_rank']} {r['dtype']} ckpt={r['grad_ckpt']} "
                    f"{r['recipe']} {r['axis']}",
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


def _moves(rows: list[dict]) -> str:
    """How far the band's ends are from the boundaries of `rows` (medians, the worst down)."""
    downs = [r["down"] for r in rows if r["down"] is not None]
    ups = [r["up"] for r in rows if r["up"] is not None]
    return (
        f"{len(rows)} boundaries with a band: down median {median(downs):.1%}, worst "
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
        print("per profile and axis:")
        for profile, axis in sorted({(r["profile"], r["setting"].rsplit(" ", 1)[1]) for r in rows}):
            part = [r for r in rows if r["profile"] == profile and r["setting"].endswith(f" {axis}")]
            print(f"  {profile} {axis}: {_moves(part)}")
    print("without a band:", ", ".join(f"{p} {n}" for p, n in sorted(missing.items())) or "none")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
