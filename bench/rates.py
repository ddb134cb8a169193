"""The host GPU's sustained rates, measured (`qlora-bench kernels --rates`): the host side of a
per-kernel speed projection, not read off a datasheet."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import click


def measure_rates(device: str, repeats: int = 20) -> list[dict]:
    """The host's sustained rates, measured: a large fp16 and bf16 matrix product (TFLOPS) and a
    device-to-device copy (GB/s, bytes read plus written), each the median of `repeats`."""
    import statistics

    import torch

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    n = 8192 if device == "cuda" else 512
    rows = []
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        seconds = timed(lambda a=a: a @ a)
        rows.append({"rate": f"gemm-{name}", "size": f"{n}x{n}x{n}", "value": 2 * n**3 / seconds / 1e12,
                     "unit": "TFLOPS"})  # fmt: skip
    count = (1 << 28) if device == "cuda" else (1 << 22)  # 1 GiB of fp32 on a GPU
    src = torch.empty(count, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src))
    rows.append(
        {"rate": "copy", "size": f"{4 * count} B", "value": 2 * 4 * count / seconds / 1e9, "unit": "GB/s"}
    )
    return rows


def write_rates(device: str, out: Path) -> None:
    from bench.envinfo import git_commit, library_versions, nvml_gpu, utc_now

    gpu = nvml_gpu() if device == "cuda" else None
    where = {
        "device": device,
        "gpu_name": gpu.name if gpu else "",
        "driver": gpu.driver if gpu else "",
        "measured_at": utc_now(),
        "git_commit": git_commit(),
        "torch": library_versions()["torch"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, ["rate", "size", "value", "unit", *where], lineterminator="\n")
        if new:
            writer.writeheader()
        for row in measure_rates(device):
            writer.writerow({**row, "value": round(row["value"], 1), **where})
            click.echo(f"{where['gpu_name'] or device}: {row['rate']} {row['value']:,.1f} {row['unit']}")
