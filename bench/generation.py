"""The format-success evaluation's generation pass, measured: shared by the step trial
(bench.trial) and TRL's trainer run (bench.trl_run)."""

from __future__ import annotations

import time

import torch

from bench.batches import make_batch
from bench.memory import MemoryProbe
from bench.qlora import DTYPES, evaluation_oom, restore_cpu_4bit_layout


def generation_peak(model, spec, device: str, probe: MemoryProbe, row: dict) -> tuple:
    """Greedy generation with a KV cache, as the format-success evaluation runs it: the eval
    batch's prompts (seq_len tokens each, the longest) and eval_new_tokens new tokens, every one
    generated; its peak and time in the gen_* columns. An OOM here is the trial's OOM."""
    prompts = make_batch("none", spec.eval_batch_size, spec.seq_len, model.config.vocab_size, device, seed=98)
    probe.reset_peak()
    t0 = time.perf_counter()
    model.eval()
    try:
        with evaluation_oom(spec.eval_batch_size), torch.no_grad():
            with torch.autocast(device_type=device, dtype=DTYPES[spec.dtype]):
                out = model.generate(
                    input_ids=prompts["input_ids"],
                    attention_mask=torch.ones_like(prompts["input_ids"]),
                    max_new_tokens=spec.eval_new_tokens,
                    min_new_tokens=spec.eval_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )
            del out
    finally:
        restore_cpu_4bit_layout(model)
        model.train()
    probe.sync()
    row["gen_s"] = time.perf_counter() - t0
    peak = probe.peak()
    row["gen_peak_alloc_gib"], row["gen_peak_reserved_gib"] = peak
    return peak
