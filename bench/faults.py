"""Test hook, in the worker: QLORA_BENCH_INJECT="<substring of trial_key>:<fault>[,...]" makes it
fail on matching trials; "tokens>N:<fault>" matches trials with batch x seq above N, the larger
of the training and the evaluation batch (a simulated memory limit for CPU tests of boundary
search). Faults: oom (a real allocation far past the
device), segfault, abort, hang, raise, sigkill (the worker kills itself, as the OS's OOM killer
would), nan (the model's embeddings output inf, so the loss is not finite, as in an fp16
overflow), unclean (after the trial the allocator is taken not to be back in its state after
the load).
"""

from __future__ import annotations

import os
import signal
import time

from bench.spec import TrialSpec

FAULTS = ("oom", "segfault", "abort", "hang", "raise", "sigkill", "nan", "unclean")
CARRIED = ("nan", "unclean")  # carried out by the trial or after it, not here


def inject(spec: TrialSpec, device: str) -> str:
    """Fail now as QLORA_BENCH_INJECT asks for this trial; returns a fault the trial carries out
    itself (nan, unclean), or ""."""
    carried = ""
    for item in filter(None, os.environ.get("QLORA_BENCH_INJECT", "").split(",")):
        needle, _, fault = item.rpartition(":")
        if needle.startswith("tokens>"):  # a simulated memory limit: batch x seq above N
            batch = max(spec.batch_size, spec.eval_batch_size)
            hit = batch * spec.seq_len > int(needle[len("tokens>") :])
        else:
            hit = bool(needle) and needle in spec.key
        if not hit:
            continue
        if fault == "oom":
            import torch

            torch.empty(2**60, dtype=torch.uint8, device=device)
        elif fault == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif fault == "abort":
            os.abort()
        elif fault == "hang":
            time.sleep(10**6)
        elif fault == "raise":
            raise RuntimeError(f"injected failure for {spec.key}")
        elif fault == "sigkill":  # the OS's OOM killer, or a user's kill -9
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault in CARRIED:
            carried = fault
    return carried
