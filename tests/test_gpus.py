"""Several GPUs of one host (`boundary --gpus`, issue 24), on the CPU: which GPUs, slots placed
on each with their own memory budget, workers pinned, and the same boundaries as one GPU."""

from __future__ import annotations

import csv

import pytest
from conftest import cli

from bench.errors import BenchUsageError
from bench.gpus import nvml_index, parse_gpus, slot_gpus


def test_parse_gpus():
    assert parse_gpus(None, 4) is None  # the default: one GPU, as before
    assert parse_gpus("all", 4) == [0, 1, 2, 3] and parse_gpus("2,0", 4) == [2, 0]
    for bad, why in (("0,0", "each GPU once"), ("4", "no GPU 4"), ("x", "indices"), (",", "each GPU once")):
        with pytest.raises(BenchUsageError, match=why):
            parse_gpus(bad, 4)
    with pytest.raises(BenchUsageError, match="no GPU on this host"):
        parse_gpus("all", 0)


def test_slots_cycle_through_the_gpus_and_nvml_follows_the_pinning(monkeypatch):
    assert slot_gpus(2, [0, 1, 2]) == [0, 1, 2, 0, 1, 2]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_index(0) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert (nvml_index(0), nvml_index(1)) == (3, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5d1c")  # a UUID: as torch numbers it
    assert nvml_index(0) == 0


def test_a_pinned_worker_sees_only_its_gpu():
    from bench.pool import Worker

    worker = Worker("spawn", gpu=5)
    try:
        worker.wait_ready(300)
        assert worker.visible_devices == "5"
    finally:
        worker.stop()


@pytest.mark.parametrize("command", ["boundary", "sweep"])
def test_gpus_needs_a_gpu_device(tmp_path, command):
    result = cli(
        command, "--profile", "t4", "--device", "cpu", "--gpus", "all", "--results-dir", str(tmp_path)
    )
    assert result.returncode == 2 and "--gpus: needs --device cuda" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_searches_spread_over_gpus_find_the_boundaries_one_gpu_finds(tmp_path, monkeypatch):
    """Two profiles' searches (two groups) with two GPUs: one slot on each, each pool pinned to
    its GPU, and every boundary equal to the one-GPU run's (on the CPU the pinning changes
    nothing else; on a GPU host each worker then sees only its GPU)."""
    from bench.boundary import BoundaryRun, run_boundaries, schedule
    from bench.config import boundary_configs

    monkeypatch.setenv("QLORA_BENCH_INJECT", "tokens>1000:oom")
    # spawned workers: a forkserver started here would keep this test's environment for the
    # rest of the session's pools (the fault injections of later tests)
    monkeypatch.setenv("QLORA_BENCH_WORKER_START", "spawn")
    pools = []

    class Recorded(schedule.WorkerPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(schedule, "WorkerPool", Recorded)
    found = {}
    for name, gpus in (("one", None), ("two", [0, 1])):
        cfgs = boundary_configs(
            profile_names=["rtx3050-laptop", "gtx1650"], device="cpu", models=None, ranks=(4,),
            dtypes=("fp16",), grad_ckpt=(False,), ref_seq_lens=None, search_axes=("seq_len",),
            reverify=False, lora_alpha_ratio=2.0, optimizer="adamw_torch", warmup_steps=1,
            measured_steps=2, results_dir=tmp_path / name, timeout_s=600, wandb_mode="off",
            overwrite=False, extra_axes={},
        )  # fmt: skip
        pools.clear()
        run_boundaries([BoundaryRun(cfg) for cfg in cfgs], parallel=1, gpus=gpus)
        found[name] = {
            (profile, r["boundary_key"]): (r["max_value"], r["first_oom_value"], r["status"])
            for profile in ("rtx3050-laptop", "gtx1650")
            for r in csv.DictReader(open(tmp_path / name / profile / "boundaries-cpu.csv"))
        }
        if gpus:
            assert sorted(p.gpu for p in pools if p.gpu is not None) == [0, 1]
    assert found["one"] == found["two"] and len(found["one"]) == 2
    assert {v[0] for v in found["one"].values()} == {"960"}


def test_a_sweep_over_two_gpus_writes_the_rows_one_gpu_writes(tmp_path, monkeypatch):
    """The grid's settings on two 'GPUs' (pools pinned to 0 and 1, one trial each at a time):
    the same rows as one GPU, OOM inferences included (an OOM implies only within its setting),
    each row once."""
    from bench import sweep
    from bench.config import sweep_config

    monkeypatch.setenv("QLORA_BENCH_INJECT", "tokens>100:oom")
    monkeypatch.setenv("QLORA_BENCH_WORKER_START", "spawn")  # as above: no forkserver of this env
    pools = []

    import bench.pool

    original = bench.pool.WorkerPool

    class Pinned(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(bench.pool, "WorkerPool", Pinned)
    found = {}
    for name, gpus in (("one", None), ("two", [0, 1])):
        cfg = sweep_config(
            profile_name="rtx3050-laptop", device="cpu", models=None, seq_lens=(64, 128, 256),
            batch_sizes=(1,), ranks=(4, 8), dtypes=("fp16",), grad_ckpt=(False,), lora_alpha_ratio=2.0,
            lora_dropout=0.05, target_modules="all-linear", optimizer="adamw_torch", warmup_steps=1,
            measured_steps=1, weights=None, results_dir=tmp_path / name, timeout_s=600, wandb_mode="off",
            overwrite=False, no_skip_implied=False, spare_workers=0, workload="step", sft_steps=1,
            sft_lr=2e-4, sft_eval_samples=1, extra_axes={},
        )  # fmt: skip
        pools.clear()
        written = sweep.run_sweep(cfg, gpus=gpus)
        rows = list(csv.DictReader(open(tmp_path / name / "rtx3050-laptop" / "trials-cpu.csv")))
        found[name] = {r["trial_key"]: (r["status"], r["inferred_from"]) for r in rows}
        assert len(rows) == len(found[name]) == sum(written.values()) == 6
        if gpus:
            assert sorted(p.gpu for p in pools) == [0, 1]
    assert found["one"] == found["two"]
    assert sorted(s for s, _ in found["one"].values()) == ["ok", "ok", "oom", "oom", "oom", "oom"]
    assert sum(bool(i) for _, i in found["one"].values()) == 2  # 256 inferred from 128, per rank
