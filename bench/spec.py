"""A trial's configuration, the grid of them, and which ones must OOM given others that did."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, replace

OPTIMIZERS = ("adamw_torch", "paged_adamw_8bit")

# Axes along which peak memory grows with everything else equal: an OOM at a value implies an
# OOM at every larger value.
MONOTONE_AXES = ("seq_len", "batch_size", "lora_rank")


@dataclass(frozen=True)
class TrialSpec:
    model: str
    seq_len: int
    batch_size: int
    lora_rank: int
    dtype: str
    grad_ckpt: bool
    lora_alpha: int
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    optimizer: str = "adamw_torch"
    warmup_steps: int = 2
    measured_steps: int = 5
    weights: str = "random"
    workload: str = "step"

    @property
    def key(self) -> str:
        key = (
            f"{self.model}|w={self.weights}|s={self.seq_len}|b={self.batch_size}|r={self.lora_rank}"
            f"|a={self.lora_alpha}|d={self.lora_dropout:g}|t={self.target_modules}|{self.dtype}"
            f"|gc={int(self.grad_ckpt)}|{self.optimizer}|w{self.warmup_steps}m{self.measured_steps}"
        )
        return key if self.workload == "step" else f"{key}|{self.workload}"

    def to_row(self) -> dict:
        return asdict(self)

    def same_except_monotone(self, other: TrialSpec) -> bool:
        # lora_alpha only scales the adapter's output: no memory. It follows rank (alpha = k*r).
        neutral = {axis: 0 for axis in (*MONOTONE_AXES, "lora_alpha")}
        return replace(self, **neutral) == replace(other, **neutral)

    def dominates(self, other: TrialSpec) -> bool:
        """True when self needs at least as much memory as other (all else equal)."""
        return self.same_except_monotone(other) and all(
            getattr(self, a) >= getattr(other, a) for a in MONOTONE_AXES
        )


@dataclass(frozen=True)
class Axes:
    models: tuple[str, ...]
    seq_lens: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    lora_ranks: tuple[int, ...]
    dtypes: tuple[str, ...]
    grad_ckpt: tuple[bool, ...]


def expand(axes: Axes, **fixed) -> list[TrialSpec]:
    """Every combination, smallest first along the monotone axes so that OOMs can prune.

    `fixed` holds the per-trial settings that are not axes; lora_alpha_ratio sets alpha = ratio * r.
    """
    ratio = fixed.pop("lora_alpha_ratio", 2)
    specs = [
        TrialSpec(
            model=m,
            dtype=dt,
            grad_ckpt=gc,
            lora_rank=r,
            batch_size=b,
            seq_len=s,
            lora_alpha=int(round(ratio * r)),
            **fixed,
        )
        for m, dt, gc, r, b, s in itertools.product(
            axes.models,
            axes.dtypes,
            sorted(axes.grad_ckpt, reverse=True),
            sorted(axes.lora_ranks),
            sorted(axes.batch_sizes),
            sorted(axes.seq_lens),
        )
    ]
    return specs


def implied_oom(spec: TrialSpec, ooms: list[TrialSpec]) -> TrialSpec | None:
    """A smaller configuration that OOMed, which makes this one OOM too, or None."""
    for small in ooms:
        if small != spec and spec.dominates(small):
            return small
    return None


def spec_from_row(row: dict) -> TrialSpec:
    """Rebuild the configuration recorded in a CSV row (strings) as a TrialSpec."""
    return TrialSpec(
        model=row["model"],
        seq_len=int(row["seq_len"]),
        batch_size=int(row["batch_size"]),
        lora_rank=int(row["lora_rank"]),
        dtype=row["dtype"],
        grad_ckpt=str(row["grad_ckpt"]).lower() == "true",
        lora_alpha=int(row["lora_alpha"]),
        lora_dropout=float(row["lora_dropout"]),
        target_modules=row["target_modules"],
        optimizer=row["optimizer"],
        warmup_steps=int(row["warmup_steps"]),
        measured_steps=int(row["measured_steps"]),
        weights=row["weights"],
        workload=row.get("workload") or "step",
    )


MODEL_FIELDS = (
    "model",
    "weights",
    "dtype",
    "grad_ckpt",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
)


def model_key(spec: dict, plan: dict, model_source: dict) -> str:
    """What a loaded QLoRA model depends on (a worker payload's parts): trials with the same key
    can share one loaded model; sequence length, batch and step counts are not in it."""
    model = {k: spec.get(k) for k in MODEL_FIELDS}
    return json.dumps([model, model_source, plan["device"], plan["cap_gib"]], sort_keys=True)
