"""`qlora-bench predict`: will this configuration fit this card? From the fitted coefficients in
results/predictor.json (analysis/predict.py fits them to every measured row; `report` writes
them), in well under a second, without a GPU, pandas or the CSVs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from bench.errors import BenchUsageError
from bench.results import variant, versions_text


def predicted_peak(group: dict, rank: int, batch: int, seq: int) -> float:
    x = [1.0, rank / 16.0, batch * seq / 1000.0]
    if not group["flash"]:
        x.append(batch * (seq / 1000.0) ** 2)
    return sum(c * v for c, v in zip(group["coef"], x, strict=True))


def _measured_boundary(results_dir: Path, profile: str, key: dict) -> str | None:
    path = results_dir / profile / "boundaries.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if (
                row["axis"] == "seq_len"
                and row["status"] == "ok"
                and (row.get("recipe") or "peft") == key["recipe"]
                and not variant(row, ("recipe",))
            ):
                same = (row["model"], row["dtype"], row["grad_ckpt"], row["lora_rank"])
                if same == (key["model"], key["dtype"], key["grad_ckpt"], str(key["rank"])):
                    return row["max_value"]
    return None


def failed_search(row: dict) -> bool:
    """A boundaries.csv row of a batch-1 sequence search (default padding, evaluation and
    allocator) that errored: its stack fails at that setting on that card."""
    return row["axis"] == "seq_len" and row["status"] == "error" and not variant(row, ("recipe",))


def _measured_failure(results_dir: Path, profile: str, key: dict) -> tuple[str, str] | None:
    """The reason and the recipe's libraries of a batch-1 sequence search at this model,
    precision, checkpointing and recipe (any rank) that failed on this profile: the stack errs."""
    path = results_dir / profile / "boundaries.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            same = (row["model"], row["dtype"], row["grad_ckpt"], row.get("recipe") or "peft")
            if failed_search(row) and same == (key["model"], key["dtype"], key["grad_ckpt"], key["recipe"]):
                return row["reason"], row.get("recipe_versions") or ""
    return None


def failure_line(recipe: str, reason: str, versions: str) -> str:
    libs = versions_text(versions) or "its base stack"
    return f"  does not run: {recipe} failed here when measured (emulated; {libs}): {reason}"


def _verdict(peak: float, gpu) -> str:
    cap = gpu.allocator_cap_gib
    verdict = (
        f"fits ({cap - peak:.2f} GiB to spare)"
        if peak <= cap
        else f"does not fit ({peak - cap:.2f} GiB short)"
    )
    return (
        f"  predicted peak reserved {peak:.2f} GiB against the card's {cap:.2f} GiB "
        f"(usable {gpu.usable_vram_gib} - CUDA context {gpu.context_overhead_gib}): {verdict}"
    )


def _load(results_dir: Path) -> dict:
    path = Path(results_dir) / "predictor.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchUsageError(
            f"{path}: no fitted predictor ({type(exc).__name__}); `qlora-bench report` writes it"
        ) from None


def _card(profile_name: str, dtype: str, known_models: set[str] | None = None):
    """The profile, refused (exit 2) for a precision its card lacks."""
    from bench.profiles import load_profile

    profile = load_profile(profile_name, known_models)
    if dtype == "bf16" and not profile.gpu.native_bf16:
        raise BenchUsageError(f"--dtype bf16: {profile.name} has no bf16 (compute capability below 8.0)")
    return profile


def _group(groups: list[dict], wanted: dict) -> dict | None:
    """The fitted group whose key holds every value of `wanted`."""
    return next((g for g in groups if all(g[k] == v for k, v in wanted.items())), None)


def _setting(
    name: str, seq_len: int, batch_size: int, rank: int, dtype: str, grad_ckpt: bool, recipe: str
) -> str:
    ckpt = "ckpt" if grad_ckpt else "no ckpt"
    return f"{name}, {seq_len} tokens x {batch_size}, r{rank}, {dtype}, {ckpt}, {recipe}"


def answer_config(results_dir: Path, profile_name: str, config: Path, seq_len: int, batch_size: int,
                  rank: int, dtype: str, grad_ckpt: bool, recipe: str) -> str:  # fmt: skip
    """The same answer for an architecture given by its config values (a config.json), from the
    cross-architecture fit (analysis/arch_predict.py)."""
    from bench.architecture import architecture, features

    try:
        values = json.loads(Path(config).read_text())
    except (OSError, ValueError) as exc:
        raise BenchUsageError(f"--config {config}: cannot read a JSON config ({exc})") from None
    arch = architecture(values, f"--config {config}")
    profile = _card(profile_name, dtype)
    gpu = profile.gpu
    fitted = _load(results_dir).get("architecture") or {}
    flash, ckpt = "flash" in gpu.sdpa_backends, "true" if grad_ckpt else "false"
    group = _group(
        fitted.get("groups", []), {"dtype": dtype, "grad_ckpt": ckpt, "recipe": recipe, "flash": flash}
    )
    name = values.get("_name_or_path") or Path(config).name
    setting = _setting(name, seq_len, batch_size, rank, dtype, grad_ckpt, recipe)
    if group is None:
        raise BenchUsageError(
            f"no cross-architecture fit for {setting} on a card with{'' if flash else 'out'} flash "
            "attention (it needs three measured models of that precision, checkpointing and recipe)"
        )
    x = features(arch, rank, batch_size, seq_len, flash)
    peak = sum(c * v for c, v in zip(group["coef"], x, strict=True))
    left = fitted.get("left_out") or {}
    return "\n".join(
        [
            f"{profile.name}: {setting}",
            _verdict(peak, gpu),
            f"  predicted from the architecture, no row of this model measured: a fit across "
            f"{len(group['models'])} measured models ({group['rows']} rows); with each measured model "
            f"left out its error was {left.get('median_error', float('nan')):.1%} (median), its fit/OOM "
            f"call right {left.get('agreement_away_from_cap', float('nan')):.1%} of the time away "
            f"from the cap: {Path(results_dir) / 'predictor.md'}",
        ]
    )


def answer(results_dir: Path, profile_name: str, model: str, seq_len: int, batch_size: int, rank: int,
           dtype: str, grad_ckpt: bool, recipe: str) -> str:  # fmt: skip
    from bench.catalog import load_catalog

    catalog = load_catalog()
    if model not in catalog:
        raise BenchUsageError(
            f"--model: unknown {model!r}; known: {sorted(catalog)} (or --config a config.json)"
        )
    profile = _card(profile_name, dtype, set(catalog))
    gpu = profile.gpu
    data = _load(results_dir)
    flash = "flash" in gpu.sdpa_backends
    ckpt = "true" if grad_ckpt else "false"
    wanted = {"model": model, "dtype": dtype, "grad_ckpt": ckpt, "recipe": recipe, "flash": flash}
    group = _group(data["groups"], wanted)
    setting = _setting(model, seq_len, batch_size, rank, dtype, grad_ckpt, recipe)
    failed = _measured_failure(Path(results_dir), profile.name, wanted) if group is None else None
    if failed:
        return "\n".join([f"{profile.name}: {setting}", failure_line(recipe, *failed)])
    if group is None:
        kernels = "flash attention" if flash else "no flash attention"
        raise BenchUsageError(
            f"no measurements to predict {setting} on a card with {kernels}: "
            f"`qlora-bench boundary --profile {profile.name} --models {model} --recipe {recipe}` "
            "measures them"
        )
    peak = predicted_peak(group, rank, batch_size, seq_len)
    lines = [
        f"{profile.name}: {setting}",
        _verdict(peak, gpu),
        f"  predicted, not measured: a fit to {group['rows']} measured rows of this model, precision, "
        f"checkpointing and recipe on cards {'with' if flash else 'without'} flash attention; its "
        f"accuracy with points left out: {Path(results_dir) / 'predictor.md'}",
    ]
    ranks = group.get("ranks") or []
    if len(ranks) == 1 and rank != ranks[0]:
        lines.append(
            f"  measured at LoRA rank {ranks[0]} only: the prediction leaves out what r{rank} changes "
            "(usually little: the adapters and their optimizer states)"
        )
    key = {**wanted, "rank": rank}
    boundary = _measured_boundary(Path(results_dir), profile.name, key) if batch_size == 1 else None
    if boundary is not None:
        lines.append(
            f"  measured on this profile (emulated): the longest sequence at batch 1 is {boundary} tokens"
        )
    return "\n".join(lines)


@click.command()
@click.option("--profile", "profile_name", required=True, help="Profile name or YAML path.")
@click.option("--model", help="Catalogue model.")
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    help="Instead of --model: a model's config.json (an architecture not in the catalogue).",
)
@click.option("--seq-len", type=click.IntRange(1), required=True)
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True)
@click.option("--rank", type=click.IntRange(1), default=16, show_default=True)
@click.option("--dtype", type=click.Choice(["fp16", "bf16"]), default="fp16", show_default=True)
@click.option("--grad-ckpt/--no-grad-ckpt", default=True, show_default=True)
@click.option("--recipe", default="peft", show_default=True, help="Training stack (docs/recipes.md).")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def predict(results_dir, profile_name, model, config, **options):
    """Predict peak memory and fit/OOM for a configuration on a card, from the measured rows."""
    try:
        if (model is None) == (config is None):
            raise BenchUsageError("give one of --model (a catalogue model) and --config (a config.json)")
        if config is not None:
            click.echo(answer_config(results_dir, profile_name, config, **options))
        else:
            click.echo(answer(results_dir, profile_name, model, **options))
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(2)


@click.command("schema")
def schema():
    """Print the result row's columns and their meaning (markdown)."""
    from bench.schema import markdown

    click.echo(markdown())
