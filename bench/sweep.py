"""The sweep: expand a profile's grid, run each point in a worker, append each row as it ends."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, replace

from bench.config import SweepConfig
from bench.envinfo import HostGPU
from bench.results import ResultsFile
from bench.runner import TrialRunner, check_recorded, host_gpu, results_path, unsupported
from bench.spec import TrialSpec, expand, implied_oom
from bench.wblog import WandbMirror


@dataclass(frozen=True)
class Planned:
    spec: TrialSpec
    action: str  # run | unsupported | recorded
    reason: str = ""


RETRIED = ("timeout",)  # a recorded status a rerun tries again (with the rerun's --timeout)


def stale_inferences(rows: list[dict]) -> set[str]:
    """Keys of rows recorded as OOMs inferred from a configuration that today's rule
    (TrialSpec.dominates: longer or larger, all else equal) does not let imply them: earlier
    versions also inferred across LoRA ranks, and r16 can fit where r8 ran out of memory. A
    sweep runs these points again, and no inference is drawn from them."""
    by_key = {r["trial_key"]: r for r in rows}
    stale = set()
    for row in rows:
        source = by_key.get(row.get("inferred_from") or "")
        if row.get("inferred_from") and (
            source is None or not TrialSpec.from_row(row).dominates(TrialSpec.from_row(source))
        ):
            stale.add(row["trial_key"])
    return stale


def plan_sweep(cfg: SweepConfig, host: HostGPU | None, store: ResultsFile) -> list[Planned]:
    check_recorded(cfg, store.path, store.rows)
    stale = stale_inferences(store.rows)
    recorded = (
        set()
        if cfg.overwrite
        else {
            r["trial_key"] for r in store.rows if r["status"] not in RETRIED and r["trial_key"] not in stale
        }
    )
    planned = []
    for spec in expand(cfg.axes):
        reason = unsupported(cfg, host, spec)
        if spec.key in recorded:
            planned.append(Planned(spec, "recorded"))
        elif reason:
            planned.append(Planned(spec, "unsupported", reason))
        else:
            planned.append(Planned(spec, "run"))
    return planned


def sweep_store(cfg: SweepConfig) -> ResultsFile:
    return ResultsFile(results_path(cfg.results_dir, cfg.profile, cfg.device))


def run_sweep(cfg: SweepConfig, progress=None, gpus: list[int] | None = None) -> Counter:
    """Run every pending point; returns a count of statuses written in this run. With `gpus`
    (several GPUs of one host, bench.gpus) the grid's settings run side by side, one trial per
    GPU at a time."""
    runner = TrialRunner(cfg, host_gpu(cfg))
    store = sweep_store(cfg)
    store.lock()
    try:
        return _run(cfg, runner, store, progress, gpus)
    finally:
        store.unlock()


def settings(todo: list[Planned]) -> list[list[Planned]]:
    """The points in groups that differ only in length and batch, in plan order: an OOM implies
    one only within its group (TrialSpec.dominates), so groups run on different GPUs draw the
    same inferences as one after another."""
    groups: dict[str, list[Planned]] = {}
    for item in todo:
        groups.setdefault(replace(item.spec, seq_len=0, batch_size=0, lora_alpha=0).key, []).append(item)
    return list(groups.values())


def _run(cfg: SweepConfig, runner: TrialRunner, store: ResultsFile, progress, gpus=None) -> Counter:
    from bench.pool import WorkerPool

    todo = [p for p in plan_sweep(cfg, runner.host, store) if p.action != "recorded"]
    stale = stale_inferences(store.rows)
    ooms = (
        []
        if cfg.overwrite
        else [
            TrialSpec.from_row(r) for r in store.rows if r["status"] == "oom" and r["trial_key"] not in stale
        ]
    )
    written: Counter = Counter()
    mirror = WandbMirror(cfg.wandb_mode, cfg.results_dir, cfg.profile.name, "trial")
    task = progress.add_task("sweep", total=len(todo)) if progress else None
    lock = threading.Lock()  # the file, the OOMs, the counts and the bar, across GPUs

    def one(item: Planned, pool, stopped=lambda: False) -> None:
        spec = item.spec
        with lock:
            if progress:
                progress.update(task, description=spec.key)
            implied = implied_oom(spec, ooms) if cfg.skip_implied else None
        if item.action == "unsupported":
            measured = {"status": "unsupported", "reason": item.reason}
        elif implied is not None:
            measured = {
                "status": "oom",
                "inferred_from": implied.key,
                "reason": "not run: a smaller configuration with everything else equal ran out of memory",
            }
        else:
            measured = pool.run(runner.request(spec), cfg.timeout_s).row
        if stopped():  # Ctrl-C while it ran: its workers were stopped, so no row
            return
        with lock:
            if measured["status"] == "oom":
                ooms.append(spec)
            store.append(runner.row(spec, measured), replace_key=True)  # a retried timeout's row goes
            mirror.log_row(store.rows[-1], spec.key)  # after the CSV: W&B never costs a row
            written[measured["status"]] += 1
            if progress:
                progress.advance(task)

    try:
        if gpus and len(gpus) > 1:
            _on_gpus(cfg, settings(todo), gpus, one)
        else:
            pool = WorkerPool(spares=cfg.spare_workers, cuda=cfg.device == "cuda", gpu=(gpus or [None])[0])
            try:
                for item in todo:
                    one(item, pool)
            except BaseException:  # Ctrl-C or a failed write: stop the workers now, not after their trials
                pool.close(graceful=False)
                raise
            finally:
                pool.close()
    finally:
        mirror.finish(store.fieldnames)
    return written


def _on_gpus(cfg: SweepConfig, groups: list[list[Planned]], gpus: list[int], one) -> None:
    """One lane per GPU, each with its own worker pool pinned to it, taking the next group of
    settings until none is left; the first failure (a failed write, Ctrl-C) stops every lane."""
    from bench.pool import WorkerPool

    waiting, failed, pools, lock = list(groups), [], [], threading.Lock()

    def lane(gpu: int) -> None:
        pool = WorkerPool(spares=cfg.spare_workers, cuda=cfg.device == "cuda", gpu=gpu)
        pools.append(pool)
        try:
            while not failed:
                with lock:
                    if not waiting:
                        return
                    group = waiting.pop(0)
                for item in group:
                    if failed:
                        return
                    one(item, pool, lambda: bool(failed))
        except BaseException as exc:
            failed.append(exc)
        finally:
            pool.close(graceful=not failed)

    threads = [threading.Thread(target=lane, args=(gpu,), daemon=True) for gpu in gpus]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except BaseException as exc:  # Ctrl-C: stop every lane's workers now, write nothing more
        failed.append(exc)
        for pool in pools:
            pool.close(graceful=False)
        raise
    if failed:
        raise failed[0]
