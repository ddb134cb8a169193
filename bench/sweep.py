"""The sweep: expand a profile's grid, run each point in a worker, append each row as it ends."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

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


def run_sweep(cfg: SweepConfig, progress=None) -> Counter:
    """Run every pending point; returns a count of statuses written in this run."""
    runner = TrialRunner(cfg, host_gpu(cfg))
    store = sweep_store(cfg)
    store.lock()
    try:
        return _run(cfg, runner, store, progress)
    finally:
        store.unlock()


def _run(cfg: SweepConfig, runner: TrialRunner, store: ResultsFile, progress) -> Counter:
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
    pool = WorkerPool(spares=cfg.spare_workers, cuda=cfg.device == "cuda")
    mirror = WandbMirror(cfg.wandb_mode, cfg.results_dir, cfg.profile.name, "trial")
    task = progress.add_task("sweep", total=len(todo)) if progress else None
    try:
        for item in todo:
            spec = item.spec
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
            if measured["status"] == "oom":
                ooms.append(spec)
            store.append(runner.row(spec, measured), replace_key=True)  # a retried timeout's row goes
            mirror.log_row(store.rows[-1], spec.key)  # after the CSV: W&B never costs a row
            written[measured["status"]] += 1
            if progress:
                progress.advance(task)
    except BaseException:  # Ctrl-C or a failed write: stop the workers now, not after their trials
        pool.close(graceful=False)
        raise
    finally:
        pool.close()
        mirror.finish(store.fieldnames)
    return written
