"""The sweep: expand a profile's grid, run each point in a worker, append each row as it ends."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import emulation
from bench.catalog import ModelArch
from bench.envinfo import HostGPU, git_commit, library_versions, nvml_gpu, utc_now
from bench.profiles import Profile
from bench.results import ResultsFile
from bench.spec import Axes, TrialSpec, expand, implied_oom, spec_from_row
from bench.wblog import WandbMirror
from bench.worker import WorkerPool


@dataclass
class SweepConfig:
    profile: Profile
    catalog: dict[str, ModelArch]
    axes: Axes
    device: str = "cuda"
    trial_settings: dict = field(default_factory=dict)  # TrialSpec fields that are not axes
    weights_path: str | None = None  # real weights (a local directory)
    results_dir: Path = Path("results")
    overwrite: bool = False
    skip_implied: bool = True
    timeout_s: float = 900.0
    spare_workers: int = 0
    worker_threads: int | None = None  # torch CPU threads per worker; None: torch's default
    wandb_mode: str = "off"  # offline | online | off: mirror each row to W&B after the CSV


def results_path(
    results_dir: Path, profile: Profile, device: str, stem: str = "trials", ext: str = "csv"
) -> Path:
    """results/<profile>/<stem>.<ext> for GPU results; CPU runs go to <stem>-cpu.<ext> beside them."""
    name = f"{stem}.{ext}" if device == "cuda" else f"{stem}-cpu.{ext}"
    return Path(results_dir) / profile.name / name


@dataclass
class Planned:
    spec: TrialSpec
    action: str  # run | unsupported | recorded
    reason: str = ""


def plan_sweep(cfg: SweepConfig, store: ResultsFile, host: HostGPU | None) -> list[Planned]:
    recorded = set() if cfg.overwrite else store.keys()
    planned = []
    for spec in expand(cfg.axes, **cfg.trial_settings):
        reason = emulation.unsupported_reason(spec.dtype, cfg.profile, host, cfg.device)
        arch = None if cfg.weights_path else cfg.catalog[spec.model]
        if arch is not None and spec.seq_len > arch.context_len:
            reason = f"seq_len {spec.seq_len} is past {arch.name}'s context of {arch.context_len}"
        if spec.key in recorded:
            planned.append(Planned(spec, "recorded"))
        elif reason:
            planned.append(Planned(spec, "unsupported", reason))
        else:
            planned.append(Planned(spec, "run"))
    return planned


def trial_payload(cfg: SweepConfig, plan: emulation.Plan, spec: TrialSpec) -> tuple:
    """What a worker needs for one trial: the spec (with its key), the plan, the model source."""
    source = {"path": cfg.weights_path} if cfg.weights_path else {"config": cfg.catalog[spec.model].config}
    return ({**spec.to_row(), "key": spec.key}, {**plan.to_worker(), "threads": cfg.worker_threads}, source)


def run_sweep(cfg: SweepConfig, progress=None) -> Counter:
    """Run every pending point; returns a count of statuses written in this run."""
    host = nvml_gpu() if cfg.device == "cuda" else None
    plan = emulation.plan(cfg.profile, cfg.device, host)
    store = ResultsFile(results_path(cfg.results_dir, cfg.profile, cfg.device))
    store.lock()
    try:
        return _run(cfg, store, plan, host, progress)
    finally:
        store.unlock()


def _env_columns(cfg: SweepConfig, plan: emulation.Plan, host: HostGPU | None) -> dict:
    import torch

    env = {
        "profile": cfg.profile.name,
        "device": cfg.device,
        "emulated": plan.emulated,
        "host_gpu": plan.host_gpu,
        "mem_cap_gib": plan.cap_gib,
        "sdpa_backends": ",".join(plan.sdpa_backends),
        "cuda": torch.version.cuda or "",
        "git_commit": git_commit(),
        "image": os.environ.get("QLORA_BENCH_IMAGE", ""),
        **library_versions(),
    }
    if host is not None:
        env.update(
            gpu_name=host.name,
            driver=host.driver,
            gpu_total_gib=host.total_gib,
            gpu_compute_capability=".".join(map(str, host.compute_capability)),
        )
    return env


def _run(cfg, store, plan, host, progress) -> Counter:
    planned = plan_sweep(cfg, store, host)
    todo = [p for p in planned if p.action != "recorded"]
    env = _env_columns(cfg, plan, host)
    ooms = [] if cfg.overwrite else [spec_from_row(r) for r in store.rows if r["status"] == "oom"]
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
                measured = pool.run(trial_payload(cfg, plan, spec), cfg.timeout_s)
            if measured["status"] == "oom":
                ooms.append(spec)
            row = {
                **spec.to_row(),
                **env,
                **measured,
                "trial_key": spec.key,
                "timestamp_utc": utc_now(),
            }
            if cfg.device == "cuda" and host is not None:  # the sweep's NVML view names the GPU
                row.update(gpu_name=host.name, driver=host.driver)
            store.append(row, replace_key=cfg.overwrite)
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
