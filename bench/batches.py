"""The batches a trial trains on, and which SDPA kernel really ran on them.

padding "none": every sequence seq_len random tokens, no attention mask (transformers then calls
SDPA with grouped-query attention and no mask, which the memory-efficient kernel refuses).
padding "longest": what a collator makes of sequences of unequal length: the longest is seq_len,
the others shorter (uniform between half and all of it), right-padded, with the attention mask;
pad positions are out of the loss (-100).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

# The aten operators SDPA dispatches to, by the backend name the profiles use.
_SDPA_OPS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_flash_attention_forward": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_efficient_attention_forward": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_attention_math": "math",
    "_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
}


def make_batch(
    padding: str, batch_size: int, seq_len: int, vocab: int, device: str, seed: int = 1234
) -> dict:
    """input_ids and labels (and attention_mask when padded) for one step; the same every step."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)
    if padding == "none":
        tokens = tokens.to(device)
        return {"input_ids": tokens, "labels": tokens}
    lengths = torch.randint(seq_len // 2 or 1, seq_len + 1, (batch_size,), generator=gen)
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    labels = tokens.masked_fill(mask == 0, -100)
    tokens = tokens.masked_fill(mask == 0, 0)
    return {"input_ids": tokens.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


class BackendProbe:
    """Record the SDPA kernels a step ran (CPU-side operator names only: no GPU memory, no CUPTI).
    `used` is their names joined with '+', 'none' when no SDPA operator ran (an attention of the
    library's own), '' when never probed."""

    def __init__(self):
        self._prof = None
        self.used = ""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU])
        with _quiet_stderr():  # the profiler's C++ side logs its start and stop there
            self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        with _quiet_stderr():
            self._prof.__exit__(*exc)
        names = {name.removeprefix("aten::") for name in _operator_names(self._prof)}
        found = sorted({backend for op, backend in _SDPA_OPS.items() if op in names})
        self.used = "+".join(found) or "none"
        self._prof = None
        return False


def _operator_names(prof) -> set[str]:
    """The operators a profile saw, read off kineto's raw events: key_averages() first builds a
    Python object for every call (0.75 s for one step of a 16-layer toy model on a CPU, against
    0.01 s here), which made every boundary probe's warm-up step seconds longer."""
    raw = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if raw is None:  # a torch without the raw results
        return {event.key for event in prof.key_averages()}
    return {event.name() for event in raw.events()}


@contextmanager
def _quiet_stderr():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
