"""The evaluation passes after a trial's measured steps, measured: the loss forward (Trainer's
evaluation loop) and the format-success evaluation's generation. Shared by the step trial
(bench.trial) and TRL's trainer run (bench.trl_run)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from bench.batches import make_batch
from bench.memory import MemoryProbe
from bench.qlora import DTYPES, evaluation_oom, restore_cpu_4bit_layout


@contextmanager
def timed_pass(probe: MemoryProbe, row: dict, prefix: str, peaks: list):
    """A pass's peak and time, in the row's {prefix}_peak_alloc_gib, {prefix}_peak_reserved_gib
    and {prefix}_s columns; the peak also goes on `peaks` (the trial's whole-run peaks)."""
    probe.reset_peak()
    t0 = time.perf_counter()
    yield
    probe.sync()
    row[f"{prefix}_s"] = time.perf_counter() - t0
    peaks.append(probe.peak())
    row[f"{prefix}_peak_alloc_gib"], row[f"{prefix}_peak_reserved_gib"] = peaks[-1]


@contextmanager
def evaluating(model, spec, device: str):
    """Eval mode, no gradients, the trial's autocast; an OOM is the trial's, its reason saying it
    was in evaluation; afterwards training mode, and on the CPU the 4-bit layout bitsandbytes
    repacked for inference undone (bench.qlora)."""
    model.eval()
    try:
        with evaluation_oom(spec.eval_batch_size), torch.no_grad():
            with torch.autocast(device_type=device, dtype=DTYPES[spec.dtype]):
                yield
    finally:
        restore_cpu_4bit_layout(model)
        model.train()


def generate(model, spec, device: str, probe: MemoryProbe, row: dict, peaks: list) -> None:
    """Greedy generation with a KV cache, as the format-success evaluation runs it: the eval
    batch's prompts (seq_len tokens each, the longest) and eval_new_tokens new tokens, every one
    generated; its peak and time in the gen_* columns. An OOM here is the trial's OOM."""
    prompts = make_batch("none", spec.eval_batch_size, spec.seq_len, model.config.vocab_size, device, seed=98)
    with timed_pass(probe, row, "gen", peaks), evaluating(model, spec, device):
        model.generate(
            input_ids=prompts["input_ids"],
            attention_mask=torch.ones_like(prompts["input_ids"]),
            max_new_tokens=spec.eval_new_tokens,
            min_new_tokens=spec.eval_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
