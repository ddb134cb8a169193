"""Several GPUs of one host (`boundary --gpus`): which to use, each worker pinned to one.

A worker is pinned by CUDA_VISIBLE_DEVICES, set in the worker before anything initialises
CUDA (bench.child.worker_main): its "cuda" is then that GPU, and its trial runs as on a
one-GPU host. NVML does not follow CUDA_VISIBLE_DEVICES, so the memory probe maps torch's
device back to NVML's (nvml_index).
"""

from __future__ import annotations

import os

from bench.errors import BenchUsageError


def nvml_count() -> int:
    """GPUs NVML sees on this host (0 without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def parse_gpus(text: str | None, count: int) -> list[int] | None:
    """--gpus: None (the default: the first GPU, as on a one-GPU host), `all`, or indices such
    as `0,2` (NVML's numbering, as nvidia-smi shows it) of the `count` GPUs this host has."""
    if text is None:
        return None
    if text.strip() == "all":
        if count < 1:
            raise BenchUsageError("--gpus all: no GPU on this host (NVML found none)")
        return list(range(count))
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchUsageError(f"--gpus {text!r}: `all` or GPU indices such as 0,1") from None
    if not gpus or len(set(gpus)) != len(gpus):
        raise BenchUsageError(f"--gpus {text!r}: each GPU once, e.g. 0,1")
    missing = [g for g in gpus if not 0 <= g < count]
    if missing:
        raise BenchUsageError(f"--gpus {text!r}: no GPU {missing[0]} on this host ({count} found)")
    return gpus


def pin(gpu: int | None) -> None:
    """In a worker, before CUDA is initialised: make `gpu` its only (and so its "cuda") device."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def nvml_index(torch_index: int) -> int:
    """NVML's index of torch's device `torch_index`, under CUDA_VISIBLE_DEVICES (numeric)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return torch_index
    try:
        return [int(v) for v in visible.split(",")][torch_index]
    except (ValueError, IndexError):  # UUIDs or MIG names: as torch numbers it
        return torch_index


def slot_gpus(slots_per_gpu: int, gpus: list[int]) -> list[int]:
    """The GPU of each search slot: the GPUs in turn, `slots_per_gpu` each."""
    return [gpu for _ in range(slots_per_gpu) for gpu in gpus]
