"""Standing a big GPU in for a small one: allocator cap, kernel and dtype restrictions."""

from __future__ import annotations

from dataclasses import dataclass

from bench.envinfo import HostGPU
from bench.errors import BenchUsageError
from bench.profiles import Profile


@dataclass(frozen=True)
class Plan:
    device: str  # cuda | cpu
    emulated: bool
    host_gpu: str  # empty on cpu
    cap_gib: float | None  # reserved-memory cap for PyTorch's allocator, None = no cap
    sdpa_backends: tuple[str, ...]
    allow_tf32: bool  # TF32 matmuls exist from sm80 on
    threads: int | None = None  # torch CPU threads in the worker; None: torch's default


def plan(profile: Profile, device: str, host: HostGPU | None) -> Plan:
    gpu = profile.gpu
    tf32 = gpu.compute_capability >= (8, 0)
    if device == "cpu":
        return Plan("cpu", False, "", None, gpu.sdpa_backends, tf32)
    if host is None:
        raise BenchUsageError(
            "no CUDA GPU found (NVML sees no device); run with --device cpu to exercise the "
            "whole path on CPU with the tiny model"
        )
    if gpu.is_this_card(host.name, host.total_gib):
        return Plan("cuda", False, host.name, None, gpu.sdpa_backends, tf32)
    if host.total_gib < gpu.usable_vram_gib:
        raise BenchUsageError(
            f"cannot emulate {profile.name} ({gpu.usable_vram_gib} GiB usable) on {host.name} "
            f"({host.total_gib:.2f} GiB): the host GPU must be at least as large"
        )
    if host.compute_capability < gpu.compute_capability:
        raise BenchUsageError(
            f"cannot emulate {profile.name} (compute capability "
            f"{'.'.join(map(str, gpu.compute_capability))}) on {host.name} "
            f"({'.'.join(map(str, host.compute_capability))}): it lacks the target's kernels"
        )
    return Plan("cuda", True, host.name, gpu.allocator_cap_gib, gpu.sdpa_backends, tf32)


def unsupported_reason(dtype: str, profile: Profile, host: HostGPU | None, device: str) -> str | None:
    """Why this dtype cannot run on the profile's card (or the host), or None."""
    if dtype != "bf16":
        return None
    cc = profile.gpu.compute_capability
    if not profile.gpu.native_bf16 or cc < (8, 0):
        return (
            f"bf16 needs compute capability >= 8.0; {profile.name} is "
            f"{cc[0]}.{cc[1]} (torch's bf16 there is slow emulation)"
        )
    if device == "cuda" and host is not None and host.compute_capability < (8, 0):
        return f"bf16 needs compute capability >= 8.0; host {host.name} lacks it"
    return None
