"""Command line: parses, validates, calls the library. `qlora-bench --profile X` runs the sweep."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bench.errors import BenchUsageError
from bench.spec import EXTRA_AXES, field_type

EXIT_USAGE = 2


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `sweep`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["sweep", *args]
        elif not args:
            args = ["sweep"]
        return super().parse_args(ctx, args)


def _parallel(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 64:
        raise click.BadParameter(f"{value!r}: give a number of searches from 1 to 64, or auto")
    return number


def _csv(kind, choices=None):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise click.BadParameter("empty list")
        if kind is int:
            try:
                numbers = [int(v) for v in items]
            except ValueError:
                raise click.BadParameter(f"{value!r}: must be whole numbers, comma-separated") from None
            if any(n <= 0 for n in numbers):
                raise click.BadParameter(f"{value!r}: every value must be > 0")
            return tuple(numbers)
        if kind is bool:
            table = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
            try:
                return tuple(dict.fromkeys(table[v.lower()] for v in items))
            except KeyError:
                raise click.BadParameter(f"{value!r}: use on,off") from None
        if kind is float:
            try:
                return tuple(float(v) for v in items)
            except ValueError:
                raise click.BadParameter(f"{value!r}: must be numbers, comma-separated") from None
        bad = [v for v in items if choices and v not in choices]
        if bad:
            raise click.BadParameter(f"unknown {bad}; choose from {', '.join(choices)}")
        return tuple(items)

    return convert


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qlora-bench")
def main():
    """What QLoRA run fits on this GPU, and how fast?

    `qlora-bench --profile rtx3050` sweeps that profile's grid (same as `qlora-bench sweep ...`).
    """


# Options shared by `sweep` and `boundary`: declared once, help text included.
PROFILE = click.option(
    "--profile",
    "profile_name",
    required=True,
    help="Profile name (see `qlora-bench profiles`) or path to a profile YAML.",
)
DEVICE = click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    default="cuda",
    show_default=True,
    help="cpu runs the whole path on CPU with the tiny architecture.",
)
MODELS = click.option("--models", callback=_csv(str), help="Override the grid's models (comma-separated).")
RANKS = click.option("--ranks", callback=_csv(int), help="Override LoRA ranks.")
DTYPES = click.option("--dtypes", callback=_csv(str), help="Override precisions: fp16,bf16.")
GRAD_CKPT = click.option("--grad-ckpt", callback=_csv(bool), help="Override gradient checkpointing: on,off.")
ALPHA_RATIO = click.option(
    "--lora-alpha-ratio",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="LoRA alpha = ratio x rank.",
)
OPTIMIZER = click.option(
    "--optimizer",
    type=click.Choice(["adamw_torch", "paged_adamw_8bit"]),
    default="adamw_torch",
    show_default=True,
)
RESULTS_DIR = click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
)
RESULTS_IN = click.option(  # commands that read results: the folder must exist
    "--results-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("results"),
    show_default=True,
)
WANDB = click.option(
    "--wandb",
    "wandb_mode",
    type=click.Choice(["offline", "online", "off", "disabled"]),
    default="offline",
    show_default=True,
    envvar="WANDB_MODE",
    show_envvar=True,
    callback=lambda ctx, param, value: "off" if value == "disabled" else value,
    help="Mirror each row to Weights & Biases after it is in the CSV: offline (no account; run "
    "files under <results-dir>/wandb, `wandb sync` them later), online (needs WANDB_API_KEY), "
    "off (or W&B's own 'disabled'). A W&B failure is reported and turns it off; it never costs "
    "a row.",
)
TIMEOUT = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=900.0,
    show_default=True,
    help="Seconds one trial may take before its worker is killed.",
)


def extra_axes(command):
    """A comma-list option for each axis added to TrialSpec beyond the grid's six (its help from
    the field); the command gets their values as `extra_axes`."""
    for f in reversed(EXTRA_AXES):
        option = click.option(
            f"--{f.name.replace('_', '-')}",
            f"axis__{f.name}",
            callback=_csv(field_type(f.name), f.metadata.get("choices")),
            help=f"{f.metadata['help']} (comma-separated to sweep; default {f.default}).",
        )
        command = option(command)
    return command


def _split_axes(options: dict) -> dict:
    """Take the added axes' values out of the options: {field name: values or None}."""
    return {k.removeprefix("axis__"): options.pop(k) for k in list(options) if k.startswith("axis__")}


@main.command()
@PROFILE
@DEVICE
@MODELS
@click.option("--seq-lens", callback=_csv(int), help="Override sequence lengths, e.g. 512,1024.")
@click.option("--batch-sizes", callback=_csv(int), help="Override batch sizes.")
@RANKS
@DTYPES
@GRAD_CKPT
@ALPHA_RATIO
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True)
@click.option(
    "--target-modules",
    default="all-linear",
    show_default=True,
    help="LoRA targets: all-linear or comma-separated module names.",
)
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
    help="Real weights: a local model directory or a hub id already in "
    "the HF cache. Default: random weights built from the catalogue's config values.",
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
def sweep(dry_run, boundaries, **options):
    """Sweep a hardware profile's grid; one CSV row per configuration."""

    def run():
        from bench import commands, config

        cfg = config.sweep_config(extra_axes=_split_axes(options), **options)
        return commands.run_sweep_command(cfg, dry_run, boundaries)

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
    callback=_csv(int),
    help="Sequence lengths at which to find the largest batch (default: the profile's).",
)
@click.option(
    "--axes",
    "search_axes",
    callback=_csv(str),
    default="seq_len,batch_size",
    show_default=True,
    help="Which boundaries: seq_len, batch_size.",
)
@click.option(
    "--parallel",
    callback=lambda ctx, param, value: _parallel(value),
    default="auto",
    show_default=True,
    help="Searches run at once (each its own capped worker). auto: as many as the host GPU "
    "holds, at most 8 and one per 2 CPU cores; 1 on CPU or a native card.",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds after which no new search starts (those running finish); rerun to resume.",
)
@click.option(
    "--reverify",
    is_flag=True,
    help="Run each boundary's fit and next step again in new fresh workers (a repeatability "
    "check; the search's own probes at both ends already ran fresh and capped).",
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
def boundary(parallel, time_budget, **options):
    """Find and verify OOM boundaries: longest sequence at batch 1, largest batch at reference lengths."""

    def run():
        from bench import commands, config

        cfgs = config.boundary_configs(extra_axes=_split_axes(options), **options)
        return commands.run_boundary_command(cfgs, parallel, time_budget)

    _guard(run)


@main.command()
@RESULTS_IN
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the markdown (default: RESULTS_DIR/boundaries.md).",
)
def report(results_dir, output):
    """Write the OOM-boundary tables (markdown) from the boundary CSVs."""
    from bench import report as report_module

    click.echo(report_module.write(results_dir, output))


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
    from analysis.figures import make_all

    made = make_all(results_dir, out)
    if not made:
        raise click.UsageError(f"no result CSVs with rows to plot under {results_dir}")
    for path in made:
        click.echo(path)


@main.command()
@click.option(
    "--profile",
    "profile_name",
    default="rtx3050",
    show_default=True,
    help="Profile whose card is emulated on a larger GPU (cap, kernels, dtypes).",
)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option(
    "--weights",
    help="Model directory or hub id in the HF cache, e.g. "
    "Qwen/Qwen2.5-0.5B-Instruct. Default on cpu: a tiny model and tokenizer built locally.",
)
@click.option("--dataset-size", type=click.IntRange(2000, 20000), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    help="Compute dtype of the 4-bit base and of autocast. Default bf16 on cuda, fp32 on cpu: a CPU "
    "without AVX-512 BF16 or AMX runs half-precision matmuls in slow software paths.",
)
@click.option("--rank", "lora_rank", type=click.IntRange(1), default=16, show_default=True)
@click.option("--grad-ckpt/--no-grad-ckpt", default=False, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate, linear decay after 5% warm-up (default 2e-4; 3e-3 for the tiny CPU model, "
    "which starts from noise).",
)
@click.option("--batch-size", type=click.IntRange(1), help="Default 8 (16 for the tiny CPU model).")
@click.option(
    "--steps", "max_steps", type=click.IntRange(1), help="Default 300 (800 for the tiny CPU model)."
)
@click.option("--eval-every", type=click.IntRange(1), help="Default 100 (200 for the tiny CPU model).")
@click.option(
    "--eval-samples",
    type=click.IntRange(1),
    default=30,
    show_default=True,
    help="Held-out prompts scored at each evaluation (greedy, batch 1).",
)
@click.option("--max-new-tokens", type=click.IntRange(8), default=64, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: results/sft/<model>-<device>); resumed if it has a checkpoint.",
)
@click.option(
    "--wandb",
    is_flag=True,
    help="Also log the curves to Weights & Biases (offline unless "
    "WANDB_MODE is set; `wandb sync` the run directory later).",
)
@click.option("--fresh", is_flag=True, help="Start over instead of resuming from --out's checkpoint.")
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


@main.command("schema")
def schema():
    """Print the result row's columns and their meaning (markdown)."""
    from bench.schema import markdown

    click.echo(markdown())


def _guard(run):
    """Run a command: a usage error is its message and exit 2, Ctrl-C exit 130 (even while
    torch & co. are still importing)."""
    try:
        code = run()
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("qlora-bench: interrupted; every finished trial is recorded", err=True)
        sys.exit(130)
    sys.exit(code or 0)
