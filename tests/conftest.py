import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    """slow and gpu tests need torch too (`-m "not torch"` is the quick set); gpu tests skip
    without CUDA."""
    for item in items:
        if "slow" in item.keywords or "gpu" in item.keywords:
            item.add_marker(pytest.mark.torch)
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Random-weight checkpoints go to one per-session temp dir, never the user's cache."""
    cache = tmp_path_factory.getbasetemp() / "qlora-bench-cache"
    monkeypatch.setenv("QLORA_BENCH_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


HANG_S = 1800  # a guard against a hung command, far past any run's time on a loaded 2-core machine


def cli(*args, env=None, timeout=HANG_S, cwd=REPO, **kwargs) -> subprocess.CompletedProcess:
    """Run qlora-bench as a user does (a separate process), returning the completed process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def search_args(results_dir: Path, *extra: str) -> list[str]:
    """A small CPU boundary search: rtx3050's longest sequence, r4 fp16 without checkpointing,
    one warm-up and one measured step, no W&B, into `results_dir`."""
    args = ["boundary", "--profile", "rtx3050", "--device", "cpu", "--ranks", "4", "--dtypes", "fp16"]
    args += ["--grad-ckpt", "off", "--axes", "seq_len", "--warmup-steps", "1", "--steps", "1"]
    return args + ["--wandb", "off", "--results-dir", str(results_dir), *extra]


def read_rows(path: Path) -> list[dict]:
    """Every row of a results CSV, parsed strictly: a row with missing or extra fields fails."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(None not in r and None not in r.values() for r in rows), f"{path} has a malformed row"
    return rows


def cpu_request(spec, source=None, threads=1):
    """A TrialRequest for the CPU: the math SDPA kernel, one torch thread, random weights of the
    catalogue's tiny model unless `source` says otherwise."""
    from bench.catalog import load_catalog
    from bench.emulation import Plan
    from bench.messages import ModelSource, TrialRequest

    plan = Plan("cpu", False, "", None, ("math",), False, threads)
    return TrialRequest(spec, plan, source or ModelSource(config=load_catalog()[spec.model].config))


def boundary_config(profile: str, results_dir, device: str = "cuda", **overrides):
    """The boundary search of a profile's default grid, as `qlora-bench boundary --profile P`
    configures it; `overrides` replace boundary_configs' arguments (ranks=(4,), ...)."""
    from bench.config import boundary_configs

    options = dict(
        profile_names=[profile],
        device=device,
        models=None,
        ranks=None,
        dtypes=None,
        grad_ckpt=None,
        ref_seq_lens=None,
        search_axes=("seq_len", "batch_size"),
        reverify=False,
        lora_alpha_ratio=2.0,
        optimizer="adamw_torch",
        warmup_steps=1,
        measured_steps=2,
        results_dir=results_dir,
        timeout_s=600,
        wandb_mode="off",
        overwrite=False,
        extra_axes={},
    )
    (cfg,) = boundary_configs(**{**options, **overrides})
    return cfg
