"""What a trial reads of memory: torch allocator peaks, NVML process and device memory, the
worker's peak RSS, and the caching allocator's exact state (segments and blocks)."""

from __future__ import annotations

import os
import statistics

import torch

from bench.schema import GIB


class MemoryProbe:
    """torch allocator peaks per phase, NVML process/device memory, CPU peak RSS."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.nvml = None
        self.nvml_process_max = None
        self.nvml_device_max = None
        if self.cuda:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                from bench.gpus import nvml_index

                self.handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(torch.cuda.current_device()))
            except Exception:
                self.nvml = None
        _reset_peak_rss()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def now(self) -> tuple[float | None, float | None]:
        if not self.cuda:
            return None, None
        return torch.cuda.memory_allocated() / GIB, torch.cuda.memory_reserved() / GIB

    def peak(self) -> tuple[float | None, float | None]:
        if not self.cuda:
            return None, None
        return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB

    def sample_nvml(self):
        if self.nvml is None:
            return
        try:
            used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / GIB
            self.nvml_device_max = max(self.nvml_device_max or 0.0, used)
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    mine = proc.usedGpuMemory / GIB
                    self.nvml_process_max = max(self.nvml_process_max or 0.0, mine)
        except Exception:
            pass


def record_peaks(row: dict, probe: MemoryProbe, peaks: list[tuple], device: str) -> None:
    """A trial's whole-run peaks (the max over its phases' (allocated, reserved) peaks), NVML's
    maxima and the worker's peak RSS into its row."""
    if device == "cuda":
        row["peak_alloc_gib"] = max(p[0] for p in peaks)
        row["peak_reserved_gib"] = max(p[1] for p in peaks)
    row["nvml_process_max_gib"] = probe.nvml_process_max
    row["nvml_device_used_max_gib"] = probe.nvml_device_max
    row["cpu_peak_rss_gib"] = peak_rss_gib()


def step_time_columns(times: list[float], tokens: int | list[int]) -> dict:
    """The measured steps' time columns: median, 90th percentile, tokens/s, every time. `tokens`:
    the real tokens of every step's batch (a list: batches that differ, tokens/s over their sum),
    or of the one batch every step trains on."""
    p50 = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {
        "step_time_p50_s": p50,
        "step_time_p90_s": p90,
        "tokens_per_s": sum(tokens) / sum(times) if isinstance(tokens, list) else tokens / p50,
        "step_times_s": ";".join(f"{t:.5f}" for t in times),
    }


def _reset_peak_rss():
    try:  # Linux >= 4.0: writing 5 resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def allocator_state(device: str) -> list | None:
    """The caching allocator's segments with their blocks (address, size, state). Two equal
    states answer the same allocation requests the same way. None off CUDA."""
    if device != "cuda":
        return None
    return [
        (
            seg["address"],
            seg["total_size"],
            seg["stream"],
            seg.get("segment_type"),
            [(block.get("address"), block["size"], block["state"]) for block in seg["blocks"]],
        )
        for seg in torch.cuda.memory_snapshot()
    ]
