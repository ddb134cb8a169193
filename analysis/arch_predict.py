"""The fit predictor for an architecture nobody measured: peak reserved memory from a model's
config values (bench/architecture.py's terms: NF4 weights, embeddings, adapters and their
optimizer states, activations a token, logits, attention scores), one fit per precision,
checkpointing, recipe and attention-kernel class across every measured model's fits, each
coefficient kept >= 0 (least squares relative to the measured peak).

Its accuracy is measured the way it is used: each measured model left out of the fit and
predicted from the others (`leave_model_out`). `analysis.predict` puts the coefficients in
results/predictor.json and the accuracy in results/predictor.md; `qlora-bench predict --config
config.json` answers from them.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from analysis.fit_accuracy import NEAR_CAP, accuracy
from analysis.projection import _nnls
from bench.architecture import architecture, features

KEY = ("dtype", "grad_ckpt", "recipe", "flash")
MIN_MODELS = 3  # a group's fit needs this many measured models (so that one can be left out)


@functools.cache
def _arch(model: str) -> dict:
    from bench.catalog import load_catalog

    return architecture(load_catalog()[model].config, model)


def _design(rows: pd.DataFrame, flash: bool) -> np.ndarray:
    return np.array(
        [features(_arch(r.model), r.lora_rank, r.batch_size, r.seq_len, flash) for r in rows.itertuples()]
    )


def fit(ok: pd.DataFrame, flash: bool) -> np.ndarray:
    y = ok.peak_reserved_gib.to_numpy(float)
    return _nnls(_design(ok, flash), y, y)


def _usable(frame: pd.DataFrame) -> pd.DataFrame:
    from bench.catalog import load_catalog

    catalog = load_catalog()
    real = [m for m, spec in catalog.items() if spec.hub_id]  # not the tests' tiny model
    return frame[frame.model.isin(real)]


def groups(frame: pd.DataFrame) -> list[dict]:
    """The fitted groups: key, coefficients, the models and rows they were fitted to."""
    out = []
    ok = _usable(frame)
    ok = ok[ok.status == "ok"]
    for key, group in ok.groupby(list(KEY)):
        if group.model.nunique() < MIN_MODELS:
            continue
        coef = fit(group, key[-1])
        out.append({**dict(zip(KEY, key, strict=True)), "coef": [round(float(c), 6) for c in coef],
                    "models": sorted(group.model.unique()), "rows": len(group)})  # fmt: skip
    return out


def leave_model_out(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row (fits and OOMs) of each model predicted by its group's fit to the other
    models' fits: the error of the peak for fits, fit/OOM against the row's cap for all."""
    out = []
    frame = _usable(frame)
    for key, group in frame.groupby(list(KEY)):
        ok = group[group.status == "ok"]
        for model, rows in group.groupby("model"):
            rest = ok[ok.model != model]
            if rest.model.nunique() < MIN_MODELS - 1 or rows.empty:
                continue
            predicted = _design(rows, key[-1]) @ fit(rest, key[-1])
            for row, peak in zip(rows.itertuples(), predicted, strict=True):
                cap = float(row.mem_cap_gib)
                out.append({**dict(zip(KEY, key, strict=True)), "model": model, "status": row.status,
                            "measured": row.peak_reserved_gib if row.status == "ok" else None,
                            "predicted": float(peak), "cap": cap,
                            "agrees": (peak <= cap) == (row.status == "ok"),
                            "near_cap": abs(peak - cap) <= NEAR_CAP * cap})  # fmt: skip
    result = pd.DataFrame(out)
    if not result.empty:
        result["error"] = (result.predicted - result.measured).abs() / result.measured
    return result


def section(frame: pd.DataFrame) -> tuple[list[str], dict | None]:
    """predictor.md's lines on it, and its accuracy over all left-out models."""
    held = leave_model_out(frame)
    if held.empty:
        return [], None
    total = accuracy(held)
    lines = [
        "",
        "## An architecture not measured: `qlora-bench predict --config config.json`",
        "",
        "One fit per precision, checkpointing, recipe and attention-kernel class across the "
        "measured models, on terms computed from a model's config values (analysis/"
        "arch_predict.py, bench/architecture.py). Each measured model left out of the fit and "
        "predicted from the others (all its rows, every profile): so a model nobody measured "
        "is predicted about this well.",
        "",
        "| model left out | points | fits | median error | p90 error | agreement away from cap "
        "(points) | agreement, all |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def line(name, acc):
        return (
            f"| {name} | {acc['points']} | {acc['fits']} | {acc['median_error']:.1%} | "
            f"{acc['p90_error']:.1%} | {acc['agreement_away_from_cap']:.1%} "
            f"({acc['points_away_from_cap']}) | {acc['agreement_all']:.1%} |"
        )

    lines.append(line("**all**", total))
    for model, group in held.groupby("model"):
        lines.append(line(model, accuracy(group)))
    return lines, total
