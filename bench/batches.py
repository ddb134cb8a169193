"""The batches a trial trains on, and which SDPA kernel really ran on them.

padding "none": every sequence seq_len random tokens, no attention mask (transformers then calls
SDPA with grouped-query attention and no mask, which the memory-efficient kernel refuses).
padding "longest": what a collator makes of sequences of unequal length: the longest is seq_len,
the others shorter (uniform between half and all of it), right-padded, with the attention mask;
pad positions are out of the loss (-100).
padding "packed": what a padding-free packing collator makes: rows of seq_len tokens filled with
whole sequences one after another (the last one cut), no mask, position ids starting again at
each sequence (flash attention's variable-length path reads the boundaries from them; other
kernels attend across them, at the same cost).
With a length distribution (spec.parse_lengths) the sequences' lengths are drawn from it, cut
at seq_len: a padded batch is as long as its longest draw.
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
    padding: str,
    batch_size: int,
    seq_len: int,
    vocab: int,
    device: str,
    seed: int = 1234,
    lengths: tuple[float, float] | None = None,
) -> dict:
    """input_ids and labels (and attention_mask when padded, position_ids when packed) for one
    step; `lengths` a log-normal's (mu, sigma) to draw sequence lengths from, None for fixed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if padding == "packed":
        return _packed(batch_size, seq_len, vocab, device, gen, lengths)
    if padding == "none":
        if lengths is not None:
            raise ValueError("padding none has every sequence seq_len tokens: no length distribution")
        tokens = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)
        return {"input_ids": tokens, "labels": tokens}
    if lengths is not None:
        drawn = _draw(lengths, batch_size, seq_len, gen)
        tokens = torch.randint(0, vocab, (batch_size, int(drawn.max())), generator=gen)
        return _padded(tokens, drawn, device)
    tokens = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)
    drawn = torch.randint(seq_len // 2 or 1, seq_len + 1, (batch_size,), generator=gen)
    drawn[0] = seq_len
    return _padded(tokens, drawn, device)


def _padded(tokens, lengths, device: str) -> dict:
    mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).long()
    labels = tokens.masked_fill(mask == 0, -100)
    tokens = tokens.masked_fill(mask == 0, 0)
    return {"input_ids": tokens.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _draw(lengths: tuple[float, float], n: int, seq_len: int, gen) -> torch.Tensor:
    """n lengths from the log-normal (mu, sigma), rounded, cut to 1..seq_len."""
    mu, sigma = lengths
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    return torch.exp(mu + sigma * z).round().clamp(1, seq_len).long()


def _packed(batch_size: int, seq_len: int, vocab: int, device: str, gen, lengths) -> dict:
    tokens = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)
    positions = torch.empty((batch_size, seq_len), dtype=torch.long)
    for row in range(batch_size):
        start = 0
        while start < seq_len:
            n = seq_len if lengths is None else int(_draw(lengths, 1, seq_len, gen))
            n = min(n, seq_len - start)
            positions[row, start : start + n] = torch.arange(n)
            start += n
    tokens = tokens.to(device)
    return {"input_ids": tokens, "labels": tokens, "position_ids": positions.to(device)}


def sequences(batch: dict) -> list[list[int]]:
    """The batch's sequences without padding, as a dataset would hold them (a packed row split
    where its position ids start again)."""
    ids = batch["input_ids"].tolist()
    if "position_ids" in batch:
        out = []
        for row, pos in zip(ids, batch["position_ids"].tolist(), strict=True):
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            out += [row[a:b] for a, b in zip(starts, starts[1:], strict=False)]
        return out
    mask = batch.get("attention_mask")
    if mask is None:
        return ids
    return [row[:n] for row, n in zip(ids, mask.sum(1).tolist(), strict=True)]


def measured_batches(spec, vocab: int, device: str) -> list[dict]:
    """With a length distribution, a batch drawn from it for each measured step (the warm-up
    keeps make_batch's fixed batch, the longest); none when lengths are fixed."""
    from bench.spec import parse_lengths

    dist = parse_lengths(spec.lengths)
    if dist is None:
        return []
    return [
        make_batch(spec.padding, spec.batch_size, spec.seq_len, vocab, device, seed=1235 + i, lengths=dist)
        for i in range(spec.measured_steps)
    ]


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
