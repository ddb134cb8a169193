"""What a trial is (TrialSpec), the grid of them (Axes), and which must OOM given others that did.

A TrialSpec's fields are the whole configuration of a trial. Each field says, next to it, its
help text and its part in the row key; everything else derives from the fields: the key, the
row columns, reading a row back, the grid's expansion, which fields a loaded model depends on,
the W&B config and the dry-run table. Adding an axis is one field here (plus its schema column
and the code that acts on it): at its default it leaves every recorded key unchanged.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import statistics
import string
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace

OPTIMIZERS = ("adamw_torch", "paged_adamw_8bit")
RECIPES = ("peft", "loop", "trl", "liger", "unsloth")  # what each runs: bench.recipes
PADDINGS = ("none", "longest", "packed")
ALLOCATORS = ("default", "expandable")

# Axes along which an OOM at a value is taken to imply an OOM at every larger value, everything
# else equal. Not LoRA rank: near the cap a larger rank fitted where a smaller one ran out of
# memory (t4 Qwen2.5-7B, 512 tokens x 4, checkpointing: r8 OOM, r16 13.74 GiB), so each rank runs.
MONOTONE_AXES = ("seq_len", "batch_size")

# The key of the fields that existed when keys were first written. Its format is fixed: recorded
# rows are matched by it. A field added later appends "|" + its `key` format (default
# "name=value") only when it is not at its default, so a new axis orphans no recorded row.
LEGACY_KEY = (
    "{model}|w={weights}|s={seq_len}|b={batch_size}|r={lora_rank}|a={lora_alpha}|d={lora_dropout:g}"
    "|t={target_modules}|{dtype}|gc={grad_ckpt:d}|{optimizer}|w{warmup_steps}m{measured_steps}"
)


def _field(default=MISSING, *, help: str, key: str | None = None, **meta):
    """A TrialSpec field: `help` (CLI and docs), `key` (its format in the row key, for fields
    outside LEGACY_KEY), `model=True` when a loaded model depends on it, `axis=True` when the CLI
    sweeps it as a comma-separated list, `choices`."""
    return field(default=default, metadata={"help": help, "key": key, **meta})


@dataclass(frozen=True)
class Workload:
    """What runs after the measured steps: nothing (step), or a short SFT whose format success goes
    in the row (sft). Written in rows and keys as "step" or "sft:STEPS:LR:SAMPLES"."""

    kind: str = "step"
    steps: int = 100
    lr: float = 2e-4
    eval_samples: int = 20

    def __str__(self) -> str:
        return "step" if self.kind == "step" else f"sft:{self.steps}:{self.lr:g}:{self.eval_samples}"

    @classmethod
    def parse(cls, text: str) -> Workload:
        if text in ("", "step"):
            return cls()
        kind, steps, lr, samples = text.split(":")
        return cls(kind, int(steps), float(lr), int(samples))


@dataclass(frozen=True)
class TrialSpec:
    model: str = _field(help="catalogue name, or the --weights path/id", model=True, axis=True)
    seq_len: int = _field(help="tokens per sequence", axis=True)
    batch_size: int = _field(help="sequences per step (no gradient accumulation)", axis=True)
    lora_rank: int = _field(help="LoRA r", model=True, axis=True)
    dtype: str = _field(
        help="fp16 (autocast + GradScaler) or bf16 (autocast); compute dtype of the NF4 base",
        model=True,
        axis=True,
    )
    grad_ckpt: bool = _field(help="gradient checkpointing on (true) or off", model=True, axis=True)
    lora_alpha: int = _field(help="LoRA alpha", model=True)
    lora_dropout: float = _field(0.05, help="LoRA dropout", model=True)
    target_modules: str = _field(
        "all-linear", help="LoRA target modules (all-linear = every linear layer but the head)", model=True
    )
    optimizer: str = _field("adamw_torch", help="adamw_torch or paged_adamw_8bit", choices=OPTIMIZERS)
    warmup_steps: int = _field(
        2, help="steps run before timing (the first one's peak is recorded separately)"
    )
    measured_steps: int = _field(5, help="timed steps")
    weights: str = _field(
        "random", help="random (built from config values) or the real-weights path/id", model=True
    )
    workload: Workload = _field(
        Workload(),
        help="step (memory and speed only) or sft (plus format success after a short SFT)",
        key="{}",
    )
    recipe: str = _field(
        "peft",
        help="training stack: peft (prepare_model_for_kbit_training, as transformers' Trainer "
        "examples do), loop (a hand-written loop: peft adapters on the 4-bit model, no fp32 upcast), "
        "trl (TRL's SFTTrainer.train), liger (peft with Liger Kernel patched in, as Trainer's "
        "use_liger_kernel does) or unsloth (FastLanguageModel, its checkpointing; GPU only)",
        model=True,
        axis=True,
        choices=RECIPES,
    )
    padding: str = _field(
        "none",
        help="none (every sequence seq_len tokens, no attention mask) or longest (a collator's "
        "padded batch: one sequence of seq_len, the others shorter, right-padded, with the "
        "attention mask, pads out of the loss)",
        axis=True,
        choices=PADDINGS,
    )
    lengths: str = _field(
        "fixed",
        help="token lengths of the sequences: fixed (none and packed: every one seq_len; longest: "
        "one of seq_len, the others between half and all of it) or a dataset's MEAN/P99 (e.g. "
        "731/1062): the measured steps draw lengths from the log-normal with that mean and 99th "
        "percentile, cut at seq_len, while the warm-up step keeps the longest batch, so the peak "
        "is what the longest batch needs and the step time what a typical one takes (with "
        "padding longest or packed)",
        axis=True,
        check="lengths",
    )
    eval_batch_size: int = _field(
        0,
        help="after the measured steps, an evaluation forward (loss, no gradients) over this many "
        "sequences of seq_len, its memory in its own columns; 0: none (transformers' default is 8)",
        axis=True,
    )
    eval_new_tokens: int = _field(
        0,
        help="after the evaluation forward, greedy generation of this many new tokens with a KV "
        "cache from eval_batch_size prompts of seq_len (the format-success evaluation's pass), "
        "its memory in its own columns; 0: none; needs eval_batch_size",
        axis=True,
    )
    allocator: str = _field(
        "default",
        help="PyTorch caching allocator: default, or expandable "
        "(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, which PyTorch's OOM message suggests)",
        model=True,
        axis=True,
        choices=ALLOCATORS,
    )

    @property
    def key(self) -> str:
        key = LEGACY_KEY.format(**{f.name: getattr(self, f.name) for f in fields(self)})
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in _LEGACY_FIELDS and value != f.default:
                key += "|" + (f.metadata["key"] or f"{f.name}={{}}").format(value)
        return key

    def to_row(self) -> dict:
        return {
            f.name: str(v) if isinstance(v := getattr(self, f.name), Workload) else v for f in fields(self)
        }

    @classmethod
    def from_row(cls, row: dict) -> TrialSpec:
        """The configuration a CSV row (strings) records; a column an older file lacks is at its
        default."""
        values = {}
        for f in fields(cls):
            text = row.get(f.name)
            if text in (None, ""):
                continue
            kind = _hints(cls)[f.name]
            if kind is bool:
                values[f.name] = str(text).lower() == "true"
            elif kind is Workload:
                values[f.name] = Workload.parse(text)
            else:
                values[f.name] = kind(text)
        return cls(**values)

    def model_key(self) -> tuple:
        """What a loaded QLoRA model depends on: trials with equal model keys can share one."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.metadata.get("model"))

    def same_except_monotone(self, other: TrialSpec) -> bool:
        # lora_alpha only scales the adapter's output: no memory. It follows rank (alpha = k*r).
        neutral = {axis: 0 for axis in (*MONOTONE_AXES, "lora_alpha")}
        return replace(self, **neutral) == replace(other, **neutral)

    def dominates(self, other: TrialSpec) -> bool:
        """True when self needs at least as much memory as other (all else equal)."""
        return self.same_except_monotone(other) and all(
            getattr(self, a) >= getattr(other, a) for a in MONOTONE_AXES
        )


_Z99 = statistics.NormalDist().inv_cdf(0.99)  # the 99th percentile, in standard deviations


def parse_lengths(text: str) -> tuple[float, float] | None:
    """`fixed` is None; `MEAN/P99` the log-normal (mu, sigma) with that mean and 99th percentile.
    ValueError names the problem."""
    if text == "fixed":
        return None
    try:
        mean, p99 = (float(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(
            f"{text!r}: give fixed, or a dataset's mean and 99th-percentile token lengths as "
            "MEAN/P99 (e.g. 731/1062)"
        ) from None
    if not 0 < mean < p99:
        raise ValueError(f"{text!r}: the mean must be above 0 and below the 99th percentile")
    # mean = exp(mu + s^2/2), p99 = exp(mu + Z99 s): s^2/2 - Z99 s + ln(p99/mean) = 0
    disc = _Z99**2 - 2 * math.log(p99 / mean)
    if disc < 0:
        raise ValueError(f"{text!r}: no log-normal has a 99th percentile that far above its mean")
    sigma = _Z99 - math.sqrt(disc)
    return math.log(mean) - sigma**2 / 2, sigma


CHECKS = {"lengths": parse_lengths}  # a field's check (metadata "check"): ValueError when bad


def _type(hint) -> type:
    return (
        next(t for t in typing.get_args(hint) if t is not type(None))
        if isinstance(hint, types.UnionType)
        else hint
    )


@functools.cache
def _hints(cls) -> dict[str, type]:
    return {name: _type(hint) for name, hint in typing.get_type_hints(cls).items()}


def field_type(name: str) -> type:
    """A TrialSpec field's value type (int, float, bool, str, Workload)."""
    return _hints(TrialSpec)[name]


_LEGACY_FIELDS = {name for _, name, _, _ in string.Formatter().parse(LEGACY_KEY) if name}
FIELD_NAMES = tuple(f.name for f in fields(TrialSpec))
TRIAL_DOC = {f.name: f.metadata["help"] for f in fields(TrialSpec)}  # the schema's column docs
# The axes a sweep shows in its dry-run table and takes as comma lists: the grid's, and any
# field declared with axis=True.
AXIS_FIELDS = tuple(f.name for f in fields(TrialSpec) if f.metadata.get("axis"))
# Fields beyond the profile grid's six that the CLI sweeps (added axes), in declaration order.
EXTRA_AXES = tuple(
    f
    for f in fields(TrialSpec)
    if f.metadata.get("axis")
    and f.name not in ("model", "seq_len", "batch_size", "lora_rank", "dtype", "grad_ckpt")
)
# each added axis's default: what a row from before the axis existed (its column empty) measured
EXTRA_DEFAULTS = {f.name: f.default for f in EXTRA_AXES if f.default is not MISSING}


@dataclass(frozen=True)
class Axes:
    """The values a sweep or search takes of each TrialSpec field: several for an axis, one for a
    fixed setting; a field not given is at its default. lora_alpha follows rank (ratio x r)."""

    values: dict = field(default_factory=dict)  # TrialSpec field name -> tuple of values
    lora_alpha_ratio: float = 2.0

    def __post_init__(self):
        unknown = sorted(name for name in self.values if name not in FIELD_NAMES or name == "lora_alpha")
        if unknown:
            raise ValueError(f"not sweepable TrialSpec fields: {unknown}")

    def __getitem__(self, name: str) -> tuple:
        return tuple(self.values[name])

    def spec(self, **chosen) -> TrialSpec:
        """One trial: `chosen` values, the rest each field's single value (or its default)."""
        fixed = {k: v[0] for k, v in self.values.items() if len(v) == 1}
        values = {**fixed, **chosen}
        return TrialSpec(lora_alpha=int(round(self.lora_alpha_ratio * values["lora_rank"])), **values)


# Expansion order: the first axes vary slowest. Monotone axes come last, smallest first, so that
# an OOM prunes the rest of its chain; checkpointing on comes first (it fits the most).
_OUTER = ("model", "dtype")
_INNER = ("grad_ckpt", "lora_rank", "batch_size", "seq_len")


def expand(axes: Axes) -> list[TrialSpec]:
    """Every combination of the axes' values."""
    middle = [n for n in axes.values if n not in (*_OUTER, *_INNER) and len(axes.values[n]) > 1]
    order = [*_OUTER, *middle, *_INNER]
    lists = [
        sorted(axes[n], reverse=True) if n == "grad_ckpt" else sorted(axes[n]) if n in _INNER else axes[n]
        for n in order
    ]
    return [axes.spec(**dict(zip(order, combo, strict=True))) for combo in itertools.product(*lists)]


def implied_oom(spec: TrialSpec, ooms: list[TrialSpec]) -> TrialSpec | None:
    """A smaller configuration that OOMed, which makes this one OOM too, or None."""
    for small in ooms:
        if small != spec and spec.dominates(small):
            return small
    return None


def model_identity(spec: TrialSpec, plan, source) -> str:
    """A loaded model's identity in a worker: its spec's model fields, where it came from, the
    device and the cap it loaded under."""
    return json.dumps(
        [[str(v) for v in spec.model_key()], repr(source), plan.device, plan.cap_gib], sort_keys=True
    )
