"""`boundary --scheduler ADDRESS|local`: the search groups as tasks on a Dask cluster.

Each group (one model and precision: its settings' searches, in order, as a slot runs them) is
one task. The task runs the group in the Dask worker exactly as a slot does (BoundaryRun's own
search_group, in a worker pool of its own), into a scratch results folder, and returns the rows;
only this process writes the CSVs, as each task finishes, so they stay consistent and
resumable. A task whose worker is lost runs again on another (Dask's own rescheduling) and its
rows are written once, when it finishes: nothing doubled, nothing half-written. A task whose
search workers fail to start (twice in a row, as a slot's do: bench/pool.py) returns what it
finished, and its searches left go out once more as a new task; a second such failure leaves
them for a rerun, as a plain run's stopped slot does when no other slot takes its group.

Workers: one per GPU, one thread each (a thread is a slot; dask-cuda's LocalCUDACluster or
`dask cuda worker` pins each to its GPU), not daemonic (DASK_DISTRIBUTED__WORKER__DAEMON=False:
a search starts worker processes of its own), with qlora-bench and the recipe's libraries
installed. `local` starts such a cluster here: dask-cuda's on a GPU host, two processes on CPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.boundary.run import BoundaryRun
from bench.boundary.schedule import slot_pool
from bench.envinfo import utc_now
from bench.errors import BenchUsageError
from bench.pool import WorkerStartFailed

CONNECT_TIMEOUT_S = float(os.environ.get("QLORA_BENCH_DASK_CONNECT_S", "30"))  # test hook


def search_remote(
    cfg, keys: list[str], recorded: list[dict], probed: list[dict]
) -> tuple[list[dict], list[dict], int, str]:
    """In a Dask worker: one group's searches (the tasks of `keys`, in that order), hinted as
    the plain run is: by the boundaries already recorded of its families and, for a search cut
    short, by its own recorded probes (`probed`, reused where this commit ran them); its boundary
    rows, its new probe rows, how many recorded probes it reused and, when its search workers
    failed to start, why (the searches it did not finish are the caller's to send again)."""
    with tempfile.TemporaryDirectory(prefix="qlora-bench-dask-") as scratch:
        run = BoundaryRun(replace(cfg, results_dir=Path(scratch), wandb_mode="off"))
        run.begin(1, None)
        try:
            by_key = {t.key: t for t in run.todo}
            for row in recorded:
                if row["boundary_key"] in by_key:
                    run._remember(by_key[row["boundary_key"]], row)
            group = [by_key[k] for k in keys if k in by_key]
            run.probes.rows = [dict(p) for p in probed]  # where cut searches left off (resume_hint)
            pool, failed = slot_pool(cfg.device == "cuda", run.runner.plan.cap_gib is None), ""
            try:
                run.search_group(group, pool, None)
            except WorkerStartFailed as exc:  # twice in a row (WorkerPool)
                failed = str(exc)
            finally:
                pool.close(graceful=False)
            new = [p for p in run.probes.rows if p not in probed]
            return list(run.store.rows), new, run.counts["reused"], failed
        finally:
            run.store.unlock()


def _client(address: str, device: str):
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise BenchUsageError(
            "--scheduler needs Dask: pip install 'qlora-bench[dask]' (and dask-cuda for a GPU host)"
        ) from None
    if address != "local":
        try:
            return Client(address, timeout=CONNECT_TIMEOUT_S), None
        except (OSError, TimeoutError) as exc:
            raise BenchUsageError(f"--scheduler {address}: no Dask scheduler answered ({exc})") from None
    dask.config.set({"distributed.worker.daemon": False})  # a search starts processes of its own
    if device == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise BenchUsageError(
                "--scheduler local on a GPU host needs dask-cuda (one worker pinned to each GPU): "
                "pip install dask-cuda, or start the cluster yourself and pass its address"
            ) from None
        cluster = LocalCUDACluster(threads_per_worker=1)
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def run_on_dask(runs: list[BoundaryRun], address: str, progress=None) -> list[dict]:
    """Search every run's groups on the cluster at `address` (or a `local` one), writing each
    group's rows here as it finishes; returns each run's summary (as run_boundaries does)."""
    started, started_utc = time.perf_counter(), utc_now()
    client, cluster = _client(address, runs[0].cfg.device)
    entered: list[BoundaryRun] = []
    futures: dict = {}
    try:
        from dask.distributed import as_completed

        slots = max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))
        for run in runs:
            run.begin(slots, progress)
            entered.append(run)
        for run in runs:
            for group in sorted(run.groups(), key=lambda g, r=run: -r.cost(g)):
                keys = [t.key for t in group]
                futures[_submit(client, run, keys)] = (run, keys, 0)
        done = as_completed(list(futures))
        for future in done:
            rows, probes, reused, failed = future.result()  # a search that raised: its error, here
            run, keys, sent = futures[future]
            _write(run, rows, probes)
            run.counts["reused"] += reused
            finished = {r["boundary_key"] for r in rows}
            rest = [k for k in keys if k not in finished]
            if failed and rest:
                where = "go out again as a new task" if sent == 0 else "are left for a rerun"
                print(f"qlora-bench: a Dask task stops, {failed}; its {len(rest)} searches left {where}",
                      file=sys.stderr)  # fmt: skip
                if sent == 0:
                    task = _submit(client, run, rest)
                    futures[task] = (run, rest, sent + 1)
                    done.add(task)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        wall = round(time.perf_counter() - started, 1)
        together = [r.cfg.profile.name for r in runs]
        summaries = [run.end(wall, started_utc, together) for run in entered]
        client.close()
        if cluster is not None:
            cluster.close()
    return summaries


def _submit(client, run: BoundaryRun, keys: list[str]):
    """One group's searches (`keys`) as a task, with what is recorded by now (a group sent again
    goes on from the probes its first task wrote)."""
    recorded = [] if run.cfg.overwrite else [dict(r) for r in run.store.rows]
    own = [] if run.cfg.overwrite else run.probes.rows  # as BoundaryRun._hint reads them
    probed = [dict(p) for p in own if p["boundary_key"] in keys]
    return client.submit(search_remote, run.cfg, keys, recorded, probed, pure=False)


def _write(run: BoundaryRun, rows: list[dict], probes: list[dict]) -> None:
    with run.lock:
        for probe in probes:
            run.probes.append(probe, replace_key=True)
            run.counts["trials"] += 1
    by_key = {t.key: t for t in run.tasks}
    for row in rows:
        run.record(by_key[row["boundary_key"]], row)  # as a slot records it
