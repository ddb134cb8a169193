"""The result CSVs under a results directory, read once (GPU results only; `-cpu` files are
test runs of the tiny model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.catalog import load_catalog
from bench.profiles import available_profiles, load_profile
from bench.results import read_results, variant


def model_order() -> list[str]:
    return list(load_catalog())


def profiles() -> list:
    """Every shipped profile, smallest usable memory first."""
    catalog = set(load_catalog())
    paths = sorted(set(available_profiles().values()))
    return sorted((load_profile(str(p), catalog) for p in paths), key=lambda p: p.gpu.usable_vram_gib)


PROFILE_ORDER = [p.name for p in profiles()]


def _read(paths, **extra) -> pd.DataFrame:
    """The files' rows in one frame; a damaged file is a usage error naming it and its line
    (bench.results.read_results), checked before pandas parses it."""
    frames = []
    for path in paths:
        if not read_results(path):
            continue
        frame = pd.read_csv(path, keep_default_na=True)
        # figures, comparisons and projections are of the main tables' measurement: the peft
        # recipe, no padding, the default allocator (bench.results.variant)
        frame = frame[[not variant(row) for row in frame.to_dict("records")]]
        frames.append(frame.assign(**extra))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dataclass
class Results:
    trials: pd.DataFrame  # sweep trials and boundary probes, `source` says which
    boundaries: pd.DataFrame
    sft_curves: pd.DataFrame
    caps: dict[str, float]
    root: Path | None = None  # the results folder they came from

    def ok_trials(self, sweeps_only: bool = False) -> pd.DataFrame:
        rows = self.trials
        if rows.empty:
            return rows
        rows = rows[rows.status == "ok"]
        return rows[rows.source == "sweep"] if sweeps_only else rows


def load(results_dir: Path) -> Results:
    root = Path(results_dir)
    sweeps = _read(sorted(root.glob("*/trials.csv")), source="sweep")
    probes = _read(sorted(root.glob("*/boundary-trials.csv")), source="boundary")
    trials = (
        pd.concat([f for f in (sweeps, probes) if not f.empty], ignore_index=True)
        if len(sweeps) + len(probes)
        else pd.DataFrame()
    )
    bounds = _read(sorted(root.glob("*/boundaries.csv")))
    curve_files = sorted(root.glob("sft/*/curves.csv"))
    curves = (
        pd.concat([pd.read_csv(p).assign(run=p.parent.name) for p in curve_files], ignore_index=True)
        if curve_files
        else pd.DataFrame()
    )
    caps = {}
    for frame in (bounds, trials):
        if not frame.empty and "mem_cap_gib" in frame:
            for profile, cap in (
                frame.dropna(subset=["mem_cap_gib"]).groupby("profile")["mem_cap_gib"].first().items()
            ):
                caps.setdefault(profile, float(cap))
    return Results(trials, bounds, curves, caps, root)
