"""`qlora-bench estimate`: a whole job's projected wall time on a card (analysis.estimate)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bench.errors import BenchUsageError


@click.command()
@click.option("--profile", "profile_name", required=True, help="Profile name or YAML path.")
@click.option("--model", required=True, help="Catalogue model.")
@click.option("--examples", type=click.IntRange(1), required=True, help="Training examples.")
@click.option("--tokens", type=click.IntRange(1), required=True, help="Tokens per example (padded).")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--recipe", default="peft", show_default=True, help="Training stack (only peft is projected).")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def estimate(profile_name, model, examples, tokens, epochs, recipe, results_dir):
    """Project a job's wall time on PROFILE's card at the fastest measured setting that fits."""
    from analysis import estimate as estimating

    try:
        answer = estimating.estimate(profile_name, model, examples, tokens, epochs, results_dir, recipe)
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(2)
    click.echo("\n".join(estimating.render(answer)))
