"""OOM boundaries: the largest sequence length (batch 1) and the largest batch at reference
lengths that fit, found by guided bisection and verified by re-runs in fresh workers.

Memory grows with sequence length and batch size, so the search brackets the boundary from
below (doubling, or a linear fit of peak reserved memory against the cap once two points fit),
then bisects, alternating fit-guided and midpoint probes so that a poor fit never costs more
than twice plain bisection. The boundary is then re-run in a fresh worker (it must fit) and so
is boundary + one step (it must OOM).

Searches are independent, so several run at once (`parallel` slots, each with its own worker
pool). Each worker's allocator cap is per process, so concurrent searches do not change each
other's memory; they do share the GPU's SMs, which is why boundary rows carry no throughput.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, replace

from bench import emulation
from bench.envinfo import utc_now
from bench.results import ResultsFile
from bench.schema import BOUNDARY_FIELDNAMES, PROBE_FIELDNAMES
from bench.spec import TrialSpec
from bench.sweep import SweepConfig, _env_columns, results_path, trial_payload
from bench.worker import WorkerPool

SEQ_STEP = 64
SEQ_LIMIT = 32768
BATCH_LIMIT = 256
SEQ_START = 512


@dataclass(frozen=True)
class BoundaryTask:
    axis: str  # seq_len | batch_size
    base: TrialSpec  # the searched axis is overwritten per probe
    upper: int  # in units of `step`
    step: int
    start: int  # first probe, in units

    @property
    def key(self) -> str:
        short = "s" if self.axis == "seq_len" else "b"
        return f"{self.axis}|" + self.at(0).key.replace(f"|{short}=0|", f"|{short}=*|")

    def at(self, units: int) -> TrialSpec:
        return replace(self.base, **{self.axis: units * self.step})


def plan_tasks(cfg: SweepConfig, ref_seq_lens: tuple[int, ...], axes=("seq_len", "batch_size")):
    """Every boundary of the grid: per model x rank x dtype x checkpointing, the longest
    sequence at batch 1 and the largest batch at each reference length."""
    tasks = []
    a = cfg.axes
    settings = {k: v for k, v in cfg.trial_settings.items() if k != "lora_alpha_ratio"}
    ratio = cfg.trial_settings.get("lora_alpha_ratio", 2)
    for model, rank, dtype, gc in itertools.product(a.models, a.lora_ranks, a.dtypes, a.grad_ckpt):
        context = cfg.catalog[model].context_len if model in cfg.catalog else SEQ_LIMIT
        limit = min(context, SEQ_LIMIT)
        base = TrialSpec(
            model=model,
            seq_len=0,
            batch_size=1,
            lora_rank=rank,
            dtype=dtype,
            grad_ckpt=gc,
            lora_alpha=int(round(ratio * rank)),
            **settings,
        )
        if "seq_len" in axes:
            tasks.append(
                BoundaryTask("seq_len", base, limit // SEQ_STEP, SEQ_STEP, min(SEQ_START, limit) // SEQ_STEP)
            )
        if "batch_size" in axes:
            for seq in ref_seq_lens:
                if seq <= limit:
                    tasks.append(
                        BoundaryTask(
                            "batch_size", replace(base, seq_len=seq, batch_size=0), BATCH_LIMIT, 1, 1
                        )
                    )
    return tasks


def _predict(fits: dict[int, float], cap_gib: float | None) -> int | None:
    """Units at which peak reserved memory reaches the cap, by a line through the two largest
    fitting probes; None without a cap or a rising line."""
    points = sorted((u, p) for u, p in fits.items() if p is not None)
    if cap_gib is None or len(points) < 2:
        return None
    (u1, p1), (u2, p2) = points[-2:]
    slope = (p2 - p1) / (u2 - u1)
    if slope <= 0:
        return None
    return int(u2 + (cap_gib - p2) / slope)


def search(task: BoundaryTask, probe, cap_gib: float | None) -> dict:
    """Largest fitting units. `probe(spec) -> row`. Returns lo, hi (None: fits to the limit),
    the fitting rows, the trial count, or an error."""
    fits: dict[int, dict] = {}
    lo, hi = 0, None
    units, trials, guided_last = min(task.start, task.upper), 0, False
    while True:
        row = probe(task.at(units))
        trials += 1
        if row["status"] == "ok":
            lo, fits[units] = max(lo, units), row
        elif row["status"] == "oom":
            hi = units if hi is None else min(hi, units)
        else:
            return {
                "error": f"{row['status']} at {task.axis}={units * task.step}: {row.get('reason', '')}",
                "trials": trials,
            }
        if hi is not None and hi - lo <= 1:
            break
        if hi is None and lo >= task.upper:
            break
        peaks = {u: r.get("peak_reserved_gib") for u, r in fits.items()}
        predicted = _predict(peaks, cap_gib)
        if hi is None:  # bracket from below: guided jump past the predicted boundary, or double
            if predicted is not None and predicted > lo:
                units = min(task.upper, predicted + 1, 4 * max(lo, 1))
            else:
                units = min(task.upper, 2 * max(lo, 1)) if lo else 1
            units = max(units, lo + 1)
        else:  # bisect, alternating a guided probe with the midpoint
            mid = (lo + hi) // 2
            use_guide = predicted is not None and lo < predicted < hi and not guided_last
            units, guided_last = (predicted, True) if use_guide else (mid, False)
    return {"lo": lo, "hi": hi, "fits": fits, "trials": trials}


HOST_HEADROOM_GIB = 16.0  # kept free on the host GPU: contexts, NVML's view, fragmentation
CONTEXT_GIB = 0.6  # a CUDA context on the H200, outside the allocator cap


def auto_parallel(cfg: SweepConfig, plan: emulation.Plan, host, models: set[str]) -> tuple[int, int]:
    """(searches at once, preloading spares per search). Each slot holds its capped worker and
    spares with the model loaded; all must fit the host GPU with headroom. Two spares keep a
    fresh worker ready even after a quick OOM, unless the second would cost a slot. At most 8
    slots, and at most one per 2 CPU cores."""
    if cfg.device != "cuda" or host is None or plan.cap_gib is None:
        return 1, 1
    loaded = max((cfg.catalog[m].loaded_gib_estimate() for m in models if m in cfg.catalog), default=0.0)
    spare = min(plan.cap_gib, loaded) + CONTEXT_GIB

    def slots(spares: int) -> int:
        fits = int((host.total_gib - HOST_HEADROOM_GIB) // (plan.cap_gib + CONTEXT_GIB + spares * spare))
        return max(1, min(8, (os.cpu_count() or 2) // 2, fits))

    return (slots(2), 2) if slots(2) >= slots(1) else (slots(1), 1)


class BoundaryRun:
    def __init__(
        self, cfg: SweepConfig, ref_seq_lens, axes, parallel: int | None, progress=None, time_budget=None
    ):
        from bench.envinfo import nvml_gpu

        self.host = nvml_gpu() if cfg.device == "cuda" else None
        self.plan = emulation.plan(cfg.profile, cfg.device, self.host)
        self.tasks = plan_tasks(cfg, ref_seq_lens, axes)
        auto, self.spares = auto_parallel(cfg, self.plan, self.host, {t.base.model for t in self.tasks})
        parallel = parallel or auto
        if cfg.worker_threads is None:  # a slot's worker and its loading spares share the cores
            cfg = replace(cfg, worker_threads=max(2, (os.cpu_count() or 2) // ((1 + self.spares) * parallel)))
        self.cfg = cfg
        self.time_budget = time_budget

        def path(stem, ext="csv"):
            return results_path(cfg.results_dir, cfg.profile, cfg.device, stem, ext)

        self.store = ResultsFile(path("boundaries"), BOUNDARY_FIELDNAMES, "boundary_key")
        self.probes = ResultsFile(path("boundary-trials"), PROBE_FIELDNAMES)
        self.runs_log = path("boundary-runs", "jsonl")
        self.parallel = parallel
        self.progress = progress
        self.lock = threading.Lock()

    def run(self) -> dict:
        self.store.lock()
        try:
            return self._run()
        finally:
            self.store.unlock()

    def _run(self) -> dict:
        started = time.perf_counter()
        self.env = _env_columns(self.cfg, self.plan, self.host)
        done = set() if self.cfg.overwrite else self.store.keys()
        todo = [t for t in self.tasks if t.key not in done]
        self._prepare_weights({t.base.model for t in todo})
        # A slot takes the searches that share one model together, so its spares' preloaded
        # model is the one the next trial needs; the largest models first, so the slots end together.
        groups: dict[tuple, list[BoundaryTask]] = {}
        for task in todo:
            groups.setdefault(replace(task.base, seq_len=0, batch_size=0).key, []).append(task)
        work: queue.Queue = queue.Queue()
        for group in sorted(groups.values(), key=lambda g: -self._size(g[0].base.model)):
            work.put(group)
        self.counts = {"boundaries": 0, "trials": 0, "verified": 0}
        self.deadline = started + self.time_budget if self.time_budget else None
        bar = self.progress.add_task("boundaries", total=len(todo)) if self.progress else None
        threads = [
            threading.Thread(target=self._slot, args=(work, bar), daemon=True)
            for _ in range(max(1, min(self.parallel, len(todo))))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        summary = {
            **self.counts,
            "left": len(todo) - self.counts["boundaries"],
            "profile": self.cfg.profile.name,
            "parallel": self.parallel,
            "spares": self.spares,
            "wall_s": round(time.perf_counter() - started, 1),
            "git_commit": self.env["git_commit"],
            "finished_utc": utc_now(),
        }
        with open(self.runs_log, "a") as f:
            f.write(json.dumps(summary) + "\n")
        return summary

    def _prepare_weights(self, models: set[str]) -> None:
        """Build each random-weight checkpoint once, before the slots race to build it."""
        if self.cfg.weights_path:
            return
        pool = WorkerPool()
        try:
            for model in sorted(models):
                payload = ("prepare", model, self.cfg.catalog[model].config, self.cfg.device)
                row = pool.run(payload, self.cfg.timeout_s)
                if row["status"] != "ok":
                    raise RuntimeError(f"could not build random weights for {model}: {row.get('reason')}")
        finally:
            pool.close()

    def _size(self, model: str) -> int:
        config = self.cfg.catalog[model].config if model in self.cfg.catalog else {}
        return config.get("hidden_size", 0) * config.get("num_hidden_layers", 0)

    def _slot(self, work: queue.Queue, bar) -> None:
        cuda = self.cfg.device == "cuda"
        pool = WorkerPool(spares=self.spares if cuda else 0, preload=cuda, fresh_each_trial=True)
        try:
            while True:
                try:
                    group = work.get_nowait()
                except queue.Empty:
                    return
                for task in group:
                    if self.deadline is not None and time.perf_counter() > self.deadline:
                        return
                    row = self._boundary(task, pool)
                    with self.lock:
                        self.store.append(row, replace_key=self.cfg.overwrite)
                        self.counts["boundaries"] += 1
                        self.counts["verified"] += row.get("verified") is True
                        if self.progress:
                            self.progress.advance(bar)
        finally:
            pool.close()

    def _probe(self, pool: WorkerPool, task: BoundaryTask, spec: TrialSpec, purpose: str) -> dict:
        t0 = time.perf_counter()
        row = pool.run(trial_payload(self.cfg, self.plan, spec), self.cfg.timeout_s)
        wall = time.perf_counter() - t0
        full = {
            **spec.to_row(),
            **self.env,
            **row,
            "trial_key": spec.key,
            "boundary_key": task.key,
            "purpose": purpose,
            "probe_wall_s": wall,
            "timestamp_utc": utc_now(),
        }
        with self.lock:
            self.probes.append(full)
            self.counts["trials"] += 1
        return row

    def _boundary(self, task: BoundaryTask, pool: WorkerPool) -> dict:
        spec = task.base
        out = {
            **self.env,
            "boundary_key": task.key,
            "axis": task.axis,
            "model": spec.model,
            "lora_rank": spec.lora_rank,
            "lora_alpha": spec.lora_alpha,
            "dtype": spec.dtype,
            "grad_ckpt": spec.grad_ckpt,
            "optimizer": spec.optimizer,
            "step": task.step,
            "upper_limit": task.upper * task.step,
            "seq_len": spec.seq_len if task.axis == "batch_size" else None,
            "batch_size": spec.batch_size if task.axis == "seq_len" else None,
        }
        reason = emulation.unsupported_reason(spec.dtype, self.cfg.profile, self.host, self.cfg.device)
        if reason:
            return {
                **out,
                "status": "unsupported",
                "reason": reason,
                "search_trials": 0,
                "timestamp_utc": utc_now(),
            }
        started = time.perf_counter()
        found = search(task, lambda s: self._probe(pool, task, s, "search"), self.plan.cap_gib)
        if "error" in found:
            out.update(status="error", reason=found["error"], search_trials=found["trials"])
        else:
            lo, hi = found["lo"], found["hi"]
            at = found["fits"].get(lo, {})
            out.update(
                status="ok",
                max_value=lo * task.step,
                first_oom_value=None if hi is None else hi * task.step,
                peak_alloc_gib=at.get("peak_alloc_gib"),
                peak_reserved_gib=at.get("peak_reserved_gib"),
                nvml_process_max_gib=at.get("nvml_process_max_gib"),
                search_trials=found["trials"],
            )
            fit = self._probe(pool, task, task.at(lo), "verify")["status"] if lo else None
            oom = self._probe(pool, task, task.at(hi), "verify")["status"] if hi is not None else None
            out.update(
                verify_fit_status=fit,
                verify_oom_status=oom,
                verified=(fit in (None, "ok")) and (oom in (None, "oom")),
            )
        out["search_wall_s"] = time.perf_counter() - started
        out["timestamp_utc"] = utc_now()
        return out
