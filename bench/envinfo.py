"""What ran a trial: library versions, git commit, GPU and driver (NVML, no CUDA context)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

from bench.paths import REPO_ROOT

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def utc_now() -> str:
    """A row's timestamp: UTC, ISO 8601, whole seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    versions["python"] = platform.python_version()
    return versions


def git_commit() -> str:
    if os.environ.get("QLORA_BENCH_GIT_COMMIT"):
        return os.environ["QLORA_BENCH_GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class HostGPU:
    name: str
    total_gib: float
    compute_capability: tuple[int, int]
    driver: str


NVML_LOST = "driver, nvml_process_max_gib and nvml_device_used_max_gib stay empty"


def nvml_gpu(index: int = 0) -> HostGPU | None:
    """The host GPU as NVML sees it; without NVML (a broken or missing driver library) but with
    a GPU torch can use, torch's view of it with the driver unknown, said once on stderr; None
    when there is no GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return _torch_gpu(index, f"{type(exc).__name__}: {exc}")
    try:
        if pynvml.nvmlDeviceGetCount() <= index:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
        cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        return HostGPU(name, total, cc, driver)
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _torch_gpu(index: int, why: str) -> HostGPU | None:
    try:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() <= index:
            return None
        props = torch.cuda.get_device_properties(index)
    except Exception:
        return None
    print(
        f"qlora-bench: NVML unavailable ({why}); GPU from torch instead: {NVML_LOST}; torch's "
        "memory figures are measured as usual",
        file=sys.stderr,
    )
    return HostGPU(props.name, props.total_memory / 2**30, (props.major, props.minor), "")
