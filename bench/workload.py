"""The sft workload of a sweep trial (--workload sft): after the measured steps, a short QLoRA
SFT on the extraction task under the same cap and kernels, and format success in the row."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.messages import TrialRequest

RANDOM_WEIGHTS_NOTE = (
    "random weights have no format success (they cannot follow instructions): "
    "pass --weights with a real model"
)


def run_sft_workload(request: TrialRequest, row: dict) -> None:
    spec, workload = request.spec, request.spec.workload
    if not request.source.path:
        row["format_note"] = RANDOM_WEIGHTS_NOTE
        return
    from bench.extraction import data, sft

    splits = data.generate(2000, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sft.SFTConfig(
            source=request.source.path,
            out=Path(tmp),
            device=request.plan.device,
            dtype=spec.dtype,
            lora_rank=spec.lora_rank,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            grad_ckpt=spec.grad_ckpt,
            lr=workload.lr,
            batch_size=spec.batch_size,
            max_steps=workload.steps,
            eval_every=workload.steps,
            eval_samples=workload.eval_samples,
            max_len=spec.seq_len,
        )
        try:
            result = sft.train(cfg, splits, request.plan, log=lambda *args, **kwargs: None)
        except BaseException as exc:
            row["format_note"] = f"the sft workload failed: {type(exc).__name__}"
            raise
    row.update(
        format_success=result["after"],
        field_accuracy=result["field_accuracy"],
        format_note=f"after {workload.steps} SFT steps at lr {workload.lr:g} on {workload.eval_samples} "
        f"held-out prompts; {result['before']:.2f} before",
    )
