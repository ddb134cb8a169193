"""Command line: parses, validates, calls the library. `qlora-bench --profile X` runs the sweep."""

from __future__ import annotations

from pathlib import Path

import click

from bench.errors import BenchUsageError
from bench.estimate import estimate
from bench.guard import guard as _guard
from bench.kernels import kernels
from bench.options import (
    ALPHA_RATIO,
    BATCH_SIZES,
    DEVICE,
    DTYPES,
    GPUS,
    GRAD_CKPT,
    MODELS,
    OPTIMIZER,
    PROFILE,
    RANKS,
    RESULTS_DIR,
    RESULTS_IN,
    SCHEDULER,
    SEQ_LENS,
    SFT_OPTIONS,
    TARGET_MODULES,
    TIMEOUT,
    WANDB,
    DefaultGroup,
    band_option,
    csv_list,
    extra_axes,
    parallel_count,
    safe_scan_option,
    split_axes,
)
from bench.predict import predict, schema
from bench.site import site
from bench.verify import verify


@click.group(cls=DefaultGroup, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qlora-bench")
def main():
    """What QLoRA run fits on this GPU, and how fast?

    `qlora-bench --profile rtx3050` sweeps that profile's grid (same as `qlora-bench sweep ...`).
    """


# Options shared by `sweep` and `boundary`: declared once, help text included.
@main.command()
@PROFILE
@DEVICE
@MODELS
@SEQ_LENS
@BATCH_SIZES
@RANKS
@DTYPES
@GRAD_CKPT
@ALPHA_RATIO
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True)
@TARGET_MODULES
@OPTIMIZER
@click.option("--warmup-steps", type=click.IntRange(1), default=2, show_default=True)
@click.option(
    "--steps",
    "measured_steps",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Measured (timed) steps per trial.",
)
@click.option(
    "--weights",
    help="Real weights: a local model directory, a hub id already in the HF cache, a GGUF file "
    "or smollm2-135m-instruct (converted once into a cached directory). Default: random weights "
    "built from the catalogue's config values.",
)
@RESULTS_DIR
@TIMEOUT
@WANDB
@click.option("--overwrite", is_flag=True, help="Re-run points already recorded.")
@click.option(
    "--no-skip-implied", is_flag=True, help="Run points that must OOM because a smaller one already did."
)
@click.option(
    "--spare-workers",
    type=click.IntRange(0, 8),
    default=None,
    help="Workers kept importing in the background so a replacement after an OOM is "
    "ready at once (default: 1 on cuda, 0 on cpu).",
)
@click.option(
    "--workload",
    type=click.Choice(["step", "sft"]),
    default="step",
    show_default=True,
    help="sft: after the measured steps, a short SFT on the JSON-extraction task and format "
    "success on held-out prompts in the row (needs --weights; random weights get a note).",
)
@click.option("--sft-steps", type=click.IntRange(1), default=100, show_default=True)
@click.option("--sft-lr", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True)
@click.option("--sft-eval-samples", type=click.IntRange(1), default=20, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the grid and what would run; write nothing.")
@click.option(
    "--boundaries",
    is_flag=True,
    help="After the sweep, find and verify the grid's OOM boundaries (as `boundary`).",
)
@extra_axes
@GPUS
def sweep(dry_run, boundaries, gpus, **options):
    """Sweep a hardware profile's grid; one CSV row per configuration."""

    def run():
        from bench import commands, config

        cfg = config.sweep_config(extra_axes=split_axes(options), **options)
        return commands.run_sweep_command(cfg, dry_run, boundaries, gpus)

    _guard(run)


@main.command()
@click.option(
    "--profile",
    "profile_names",
    required=True,
    multiple=True,
    help="Profile name or YAML path; repeat it to search several profiles together (they share "
    "the slots and the host GPU, which finishes sooner than one after another).",
)
@DEVICE
@MODELS
@RANKS
@DTYPES
@GRAD_CKPT
@click.option(
    "--ref-seq-lens",
    callback=csv_list(int),
    help="Sequence lengths at which to find the largest batch (default: the profile's).",
)
@click.option(
    "--axes",
    "search_axes",
    callback=csv_list(str),
    default="seq_len,batch_size",
    show_default=True,
    help="Which boundaries: seq_len, batch_size, eval_batch_size (the largest evaluation batch "
    "after training at batch 1, at each --ref-seq-lens length).",
)
@click.option(
    "--parallel",
    callback=lambda ctx, param, value: parallel_count(value),
    default="auto",
    show_default=True,
    help="Searches run at once (each its own capped worker). auto: as many as the host GPU "
    "holds, at most 8 and one per 2 CPU cores; 1 on CPU or a native card.",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds (from the first search, after any random-weight checkpoints are built) after "
    "which no new search starts (those running finish); rerun to resume.",
)
@safe_scan_option
@band_option
@click.option(
    "--reverify",
    is_flag=True,
    help="Run each boundary's fit and next step again in new fresh workers (a repeatability "
    "check; the search's own probes ran capped, each after a fresh load or on a model its worker "
    "kept with the allocator back in the load's state).",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Run every probe in a new worker, from a fresh load, as a user's run starts (no model "
    "kept from the probe before; slower): the check of a boundary found with kept models.",
)
@ALPHA_RATIO
@OPTIMIZER
@click.option("--warmup-steps", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--steps",
    "measured_steps",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Steps after warm-up; two or more, so the optimizer states are in the peak.",
)
@RESULTS_DIR
@TIMEOUT
@WANDB
@click.option("--overwrite", is_flag=True, help="Search boundaries already recorded again.")
@extra_axes
@GPUS
@SCHEDULER
def boundary(parallel, time_budget, gpus, scheduler, **options):
    """Find and verify OOM boundaries: longest sequence at batch 1, largest batch at reference lengths."""

    def run():
        from bench import commands, config

        cfgs = config.boundary_configs(extra_axes=split_axes(options), **options)
        return commands.run_boundary_command(cfgs, parallel, time_budget, gpus, scheduler)

    _guard(run)


@main.command()
@RESULTS_IN
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the tables (default: RESULTS_DIR/boundaries.md); the purchase summary "
    "goes beside it as purchase.md.",
)
def report(results_dir, output):
    """Write the OOM-boundary tables and the purchase summary (markdown) from the result CSVs."""

    def run():
        from bench import report as report_module

        for path in report_module.write(results_dir, output):
            click.echo(path)

    _guard(run)


@main.command()
@click.argument("profiles", nargs=-1, required=True)
@click.option("--model", "models", multiple=True, help="Only this model (repeatable); default: all measured.")
@click.option(
    "--ref-seq",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Reference length for the largest batch.",
)
@RESULTS_IN
def compare(profiles, models, ref_seq, results_dir):
    """GPUs side by side from measured boundaries: `qlora-bench compare t4 l4 [--model qwen2.5-7b]`."""

    def run():
        from analysis import compare as compare_module

        compare_module.render(
            compare_module.compare(list(profiles), results_dir, list(models) or None, ref_seq)
        )

    _guard(run)


@main.command()
@RESULTS_IN
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the PNGs (default: RESULTS_DIR/figures).",
)
def plot(results_dir, out):
    """Seaborn figures (PNG) from the result CSVs: memory, boundaries, throughput, format success."""

    def run():
        from analysis.figures import make_all

        made = make_all(results_dir, out)
        if not made:
            cpu = sorted(results_dir.glob("*/*-cpu.csv"))
            why = f"; only CPU test runs ({', '.join(map(str, cpu))}), which are not plotted" if cpu else ""
            raise BenchUsageError(f"no GPU result rows to plot under {results_dir}{why}")
        for path in made:
            click.echo(path)

    _guard(run)


@main.command()
@SFT_OPTIONS
def sft(**options):
    """QLoRA SFT on JSON extraction; format success before, during and after."""

    def run():
        from bench import commands

        return commands.run_sft_command(**options)

    _guard(run)


@main.command("profiles")
def list_profiles():
    """List the shipped hardware profiles."""

    def run():
        from bench import commands

        return commands.list_profiles_command()

    _guard(run)


for command in (schema, predict, site, verify, kernels, estimate):  # commands of their own modules
    main.add_command(command)
