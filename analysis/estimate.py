"""`qlora-bench estimate`: how long a whole fine-tuning job takes on a card, at the fastest
setting that fits it.

The settings are the card's measured boundaries (results/<profile>/boundaries.csv, the recipe's
rows): each precision the card has, with and without gradient checkpointing, at the smallest
LoRA rank measured. A setting fits when its longest sequence at batch 1 (the safe value where a
scan found one) reaches the job's tokens per example; its batch is the largest measured at the
shortest reference length that holds those tokens (batch 1 when none does). Each fitting
setting's step time is **projected** (analysis.projection) and the fastest wins. The band is
the projection's error as measured against the H200's own steps with each model left out of
the fit (its 90th percentile, both ways): no small card has been measured natively, so the
error on one is not known, and the answer says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.data import load
from analysis.projection import calibrated
from bench.catalog import load_catalog
from bench.errors import BenchUsageError
from bench.profiles import load_profile


def safe_tokens(row) -> int:
    """A boundary's value a buyer can count on: its safe value where a scan below it ran, else
    the largest that fit (the same where no value below it ran out of memory)."""
    safe = row.get("safe_value")
    return int(safe) if pd.notna(safe) and str(safe) != "" else int(row["max_value"])


def settings(bounds: pd.DataFrame, tokens: int) -> list[dict]:
    """The measured settings that train `tokens` per example: dtype, ckpt, rank, batch and the
    boundary rows they come from."""
    out = []
    ok = bounds[bounds.status == "ok"]
    for (dtype, ckpt), rows in ok.groupby(["dtype", "grad_ckpt"]):
        rank = rows.lora_rank.min()
        rows = rows[rows.lora_rank == rank]
        seq = rows[rows.axis == "seq_len"]
        if seq.empty:
            continue
        longest = safe_tokens(seq.iloc[0])
        if longest < tokens:
            continue
        batch, source = 1, f"seq_len boundary {longest}"
        refs = rows[(rows.axis == "batch_size") & (rows.seq_len >= tokens)].sort_values("seq_len")
        if not refs.empty and safe_tokens(refs.iloc[0]) >= 1:
            batch = safe_tokens(refs.iloc[0])
            source += f"; batch boundary {batch} at {int(refs.iloc[0].seq_len)} tokens"
        out.append({"dtype": dtype, "grad_ckpt": bool(ckpt), "lora_rank": int(rank), "batch": batch,
                    "source": source})  # fmt: skip
    return out


def estimate(
    profile_name: str,
    model: str,
    examples: int,
    tokens: int,
    epochs: int,
    results_dir: Path,
    recipe: str = "peft",
) -> dict:
    catalog = load_catalog()
    if model not in catalog:
        raise BenchUsageError(f"--model: unknown {model!r}; known: {sorted(catalog)}")
    profile = load_profile(profile_name, set(catalog))
    if recipe != "peft":
        raise BenchUsageError(
            f"--recipe {recipe}: the projection is fitted to peft's step only; estimate peft"
        )
    data = load(results_dir)
    bounds = data.boundaries
    if not bounds.empty:
        bounds = bounds[(bounds.profile == profile.name) & (bounds.model == model)]
    if bounds.empty:
        raise BenchUsageError(
            f"no measured boundaries of {model} on {profile.name} under {results_dir} "
            f"(measure them: qlora-bench boundary --profile {profile.name} --models {model})"
        )
    projection = calibrated(data)
    if projection is None:
        raise BenchUsageError(f"no measured step times under {results_dir} to project from")
    error = projection.calibration()["p90_error_left_out"]
    options = job_options(projection, profile, bounds, examples, tokens, epochs, error)
    others = [] if options else other_recipes(boundary_rows(Path(results_dir), profile.name), model, tokens)
    return {"profile": profile.name, "model": model, "examples": examples, "tokens": tokens,
            "epochs": epochs, "error": error, "options": options, "others": others}  # fmt: skip


def boundary_rows(results_dir: Path, profile: str) -> list[dict]:
    """Every boundary row of a profile, of every recipe (analysis.data keeps peft's only)."""
    from bench.results import read_boundaries

    path = results_dir / profile / "boundaries.csv"
    return read_boundaries(path) if path.exists() else []


def other_recipes(rows: list[dict], model: str, tokens: int) -> list[str]:
    """Where peft's path does not train `tokens` at batch 1: the other recipes' measured settings
    in `rows` (boundary_rows) that do (their safe value, where a scan found one, must reach it)."""
    from bench.results import value_text, variant

    found = []
    for row in rows:
        recipe = row.get("recipe") or "peft"
        if (
            recipe == "peft" or row["model"] != model or row["axis"] != "seq_len" or row["status"] != "ok"
            or variant(row, ("recipe",))
            or safe_tokens(row) < tokens
        ):  # fmt: skip
            continue
        ckpt = "ckpt" if row["grad_ckpt"] == "true" else "no ckpt"
        found.append(f"{recipe} ({row['dtype']}, {ckpt}, r{row['lora_rank']}): {value_text(row)} tokens")
    return found


def job_options(
    projection, profile, bounds, examples: int, tokens: int, epochs: int, error: float
) -> list[dict]:
    """Each measured setting of `bounds` (one model on `profile`) that trains `tokens`, with
    the job's projected hours and band, fastest first."""
    options = []
    for setting in settings(bounds, tokens):
        step = projection.step_s(
            profile, bounds.model.iloc[0], tokens, setting["batch"],
            setting["grad_ckpt"], setting["dtype"],
        )  # fmt: skip
        steps = math.ceil(examples / setting["batch"]) * epochs
        hours = steps * step / 3600
        options.append({**setting, "steps": steps, "step_s": step, "hours": hours,
                        "low": hours / (1 + error), "high": hours * (1 + error)})  # fmt: skip
    return sorted(options, key=lambda o: o["hours"])


def render(answer: dict) -> list[str]:
    head = (
        f"{answer['model']} on {answer['profile']}: {answer['examples']} examples x "
        f"{answer['tokens']} tokens x {answer['epochs']} epochs"
    )
    if not answer["options"]:
        others = answer.get("others") or []
        where = (
            "measured to train it at batch 1 with: " + "; ".join(others) + " (their step time is not "
            "projected: the projection is fitted to peft's step)"
            if others
            else "nor with another recipe measured (results/boundaries.md)"
        )
        return [
            f"{head}: does not fit on peft's path (no measured setting trains {answer['tokens']} "
            f"tokens at batch 1); {where}"
        ]
    lines = [f"{head}, PROJECTED (not measured):"]
    for i, o in enumerate(answer["options"]):
        setting = (
            f"{o['dtype']}, {'ckpt' if o['grad_ckpt'] else 'no ckpt'}, r{o['lora_rank']}, batch {o['batch']}"
        )
        lines.append(
            f"{'  fastest' if i == 0 else '         '} {setting}: ~{_hours(o['hours'])} "
            f"(band {_hours(o['low'])}-{_hours(o['high'])}; {o['steps']} steps of ~{o['step_s']:.2f} s; "
            f"from the {o['source']})"
        )
    lines.append(
        f"Band: the projection's 90th-percentile error ({answer['error']:.0%}) against the H200's "
        "own steps with each model left out; its error on a real small card is not measured."
    )
    return lines


def _hours(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"
