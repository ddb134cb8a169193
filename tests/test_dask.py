"""Boundary searches on a Dask cluster (`boundary --scheduler`, issue 24), on the CPU: a local
cluster of two worker processes finds the boundaries the plain run finds, the rows written here
once each; a scheduler that does not answer, or options the cluster makes moot, are usage
errors that write nothing."""

from __future__ import annotations

import csv

import pytest
from conftest import cli

pytest.importorskip("distributed")

CONFIG = dict(
    profile_names=["rtx3050-laptop", "gtx1650"], device="cpu", models=None, ranks=(4, 8),
    dtypes=("fp16",), grad_ckpt=(False,), ref_seq_lens=None, search_axes=("seq_len",),
    reverify=False, lora_alpha_ratio=2.0, optimizer="adamw_torch", warmup_steps=1,
    measured_steps=2, timeout_s=600, wandb_mode="off", overwrite=False, extra_axes={},
)  # fmt: skip


def _found(root):
    out, probes = {}, {}
    for profile in ("rtx3050-laptop", "gtx1650"):
        for r in csv.DictReader(open(root / profile / "boundaries-cpu.csv")):
            out[profile, r["boundary_key"]] = (r["max_value"], r["first_oom_value"], r["status"])
        rows = list(csv.DictReader(open(root / profile / "boundary-trials-cpu.csv")))
        keys = [(r["boundary_key"], r["trial_key"], r["purpose"]) for r in rows]
        assert len(keys) == len(set(keys))  # every probe once
        probes[profile] = sorted(keys)
    return out, probes


@pytest.mark.torch
def test_a_local_dask_cluster_finds_the_boundaries_the_plain_run_finds(tmp_path, monkeypatch):
    from bench.boundary import BoundaryRun, run_boundaries
    from bench.boundary.dask_run import run_on_dask
    from bench.config import boundary_configs

    monkeypatch.setenv("QLORA_BENCH_INJECT", "tokens>1000:oom")
    monkeypatch.setenv("QLORA_BENCH_GIT_COMMIT", "0123abc")  # known code: its probes are reused
    monkeypatch.setenv("QLORA_BENCH_WORKER_START", "spawn")  # no forkserver keeping this env
    runs = {name: [BoundaryRun(c) for c in boundary_configs(results_dir=tmp_path / name, **CONFIG)]
            for name in ("plain", "dask")}  # fmt: skip
    run_boundaries(runs["plain"], parallel=1)
    summaries = run_on_dask(runs["dask"], "local")
    plain, dask = _found(tmp_path / "plain"), _found(tmp_path / "dask")
    assert dask == plain and len(plain[0]) == 4  # two profiles x two ranks
    assert {v[0] for v in plain[0].values()} == {"960"}
    assert [s["boundaries"] for s in summaries] == [2, 2]
    # resumed: everything is recorded, nothing runs again
    resumed = [BoundaryRun(c) for c in boundary_configs(results_dir=tmp_path / "dask", **CONFIG)]
    again = run_on_dask(resumed, "local")
    assert [s["boundaries"] for s in again] == [0, 0] and _found(tmp_path / "dask") == dask
    # killed after its probes, before its boundaries: searched again, every probe reused (the
    # same commit), none run
    for profile in ("rtx3050-laptop", "gtx1650"):
        (tmp_path / "dask" / profile / "boundaries-cpu.csv").unlink()
    cut = [BoundaryRun(c) for c in boundary_configs(results_dir=tmp_path / "dask", **CONFIG)]
    third = run_on_dask(cut, "local")
    assert _found(tmp_path / "dask") == dask
    assert [s["trials"] for s in third] == [0, 0]
    assert [s["reused"] for s in third] == [s["trials"] for s in summaries]


def test_a_scheduler_that_does_not_answer_is_a_usage_error(tmp_path):
    base = ["boundary", "--profile", "t4", "--device", "cpu", "--results-dir", str(tmp_path)]
    result = cli(*base, "--scheduler", "tcp://127.0.0.1:9", env={"QLORA_BENCH_DASK_CONNECT_S": "3"})
    assert result.returncode == 2
    assert "--scheduler tcp://127.0.0.1:9: no Dask scheduler answered" in result.stderr
    result = cli(*base, "--scheduler", "local", "--time-budget", "60")
    assert result.returncode == 2 and "no --parallel, --gpus or --time-budget" in result.stderr
    assert not any(tmp_path.rglob("*.csv"))  # nothing started, nothing written


@pytest.mark.torch
def test_a_dask_task_whose_workers_die_as_they_start_goes_out_again_once(tmp_path, monkeypatch, capsys):
    """The H200's search workers killed as they started (docs/published-results.md), on a Dask
    worker: a task whose pool fails twice in a row returns what it finished, and its searches go
    out once more as a new task; when that one fails as well they are left for a rerun (the run
    ends, its other groups recorded). One Dask worker, so the tasks run one after another."""
    import dask
    from dask.distributed import Client, LocalCluster

    from bench.boundary import BoundaryRun
    from bench.boundary.dask_run import run_on_dask
    from bench.config import boundary_configs

    monkeypatch.setenv("QLORA_BENCH_INJECT", "tokens>1000:oom")
    monkeypatch.setenv("QLORA_BENCH_WORKER_START", "spawn")

    def kill_starts(n):  # in the Dask worker: the next n worker starts die with SIGKILL
        import os
        import signal

        from bench.pool import Worker

        start, left = getattr(Worker, "unpatched", Worker.wait_ready), [n]

        def wait_ready(self, timeout):
            if not self.ready and left[0] > 0:
                left[0] -= 1
                os.kill(self.process.pid, signal.SIGKILL)
            return start(self, timeout)

        Worker.unpatched, Worker.wait_ready = start, wait_ready

    config = {**CONFIG, "ranks": (4,)}  # two groups: one per profile
    died = "a Dask task stops, worker failed to start: worker died with SIGKILL"
    dask.config.set({"distributed.worker.daemon": False})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:

            def search(kills: int, folder: str) -> tuple[list[dict], str]:
                client.run(kill_starts, kills)
                runs = [BoundaryRun(c) for c in boundary_configs(results_dir=tmp_path / folder, **config)]
                return run_on_dask(runs, cluster.scheduler_address), capsys.readouterr().err

            # the first task's two starts: its search sent again, and every boundary found
            summaries, err = search(2, "again")
            assert err.count(died) == 1 and "its 1 searches left go out again as a new task" in err
            assert [(s["boundaries"], s["left"]) for s in summaries] == [(1, 0), (1, 0)]
            assert {v[0] for v in _found(tmp_path / "again")[0].values()} == {"960"}
            # every start killed: each group's task and its second go both fail, the run ends
            summaries, err = search(10**6, "left")
            assert err.count(died) == 4 and err.count("its 1 searches left are left for a rerun") == 2
            assert [(s["boundaries"], s["left"]) for s in summaries] == [(0, 1), (0, 1)]
