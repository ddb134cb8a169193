"""OOM boundaries: the largest sequence length (batch 1) and the largest batch at reference
lengths that fit, found by guided bisection; every probe runs under the cap in a worker whose
allocator is in the state a fresh load leaves.

Memory grows with sequence length and batch size, so the search brackets the boundary (from a
sibling's boundary when one is known: the same search at another LoRA rank, or the batch-1
sequence boundary for a batch search; else from below, by a line of peak reserved memory
against the cap), then bisects, alternating fit-guided and midpoint probes so that a poor fit
never costs more than twice plain bisection. It ends only when the boundary ran and fit and
boundary + one step ran and ran out of memory: those two runs are the verification (none of it
is inferred). Each probe runs in a worker that just loaded its model (during the probe, or
before it: a slot's spare preloads the next model setting while the current one's probes run)
or kept it from its last probe, the latter only when the caching allocator came back, segment
for segment and block for block, to the state the load left (trial.ModelSlot.restore); a
worker whose allocator did not, or whose probe failed otherwise, is replaced by a new process.
Re-running the two ends in new workers gave the same peaks to the byte for all 268 boundaries of
the ba44807 run (results/README.md), so that re-run is optional (--reverify).

Searches are independent, so several run at once (`parallel` slots, each with its own worker
pool). Each worker's allocator cap is per process, so concurrent searches do not change each
other's memory; they do share the GPU's SMs, which is why boundary rows carry no throughput.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import time
from dataclasses import dataclass, replace

from bench import emulation
from bench.envinfo import utc_now
from bench.results import ResultsFile
from bench.schema import BOUNDARY_FIELDNAMES, PROBE_FIELDNAMES
from bench.spec import TrialSpec, model_key
from bench.sweep import SweepConfig, _env_columns, results_path, trial_payload
from bench.wblog import WandbMirror
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


def _predict(fits: dict[int, float], cap_gib: float | None, floor_gib: float | None = None) -> int | None:
    """Units at which peak reserved memory reaches the cap, by a line through the largest
    fitting probe and the largest one well below it (adjacent probes differ by allocator
    granularity more than by the step); with one probe, through `floor_gib` at zero (the loaded
    model, which underestimates the boundary). None without a cap or a rising line."""
    points = sorted((u, p) for u, p in fits.items() if p is not None)
    if cap_gib is None or not points:
        return None
    u2, p2 = points[-1]
    below = [(u, p) for u, p in points if u <= u2 - max(2, u2 // 8)]
    if below:
        u1, p1 = below[-1]
    elif floor_gib is not None:
        u1, p1 = 0, floor_gib
    elif len(points) >= 2:
        u1, p1 = points[-2]
    else:
        return None
    slope = (p2 - p1) / (u2 - u1)
    if slope <= 0:
        return None
    return int(u2 + (cap_gib - p2) / slope)


def search(task: BoundaryTask, probe, cap_gib: float | None, hint: int | None = None) -> dict:
    """Largest fitting units. `probe(spec) -> row`. Returns lo, hi (None: fits to the limit),
    the fitting rows, the trial count, or an error.

    Without a hint the search brackets from `task.start` upwards. With a hint (a close
    sibling's boundary) it probes the hint, then one step past it on the side its result
    points to, so a good hint settles the boundary in two trials; a poor one continues by
    growing steps away from it and then bisection."""
    fits: dict[int, dict] = {}
    lo, hi = 0, None
    units = max(1, min(task.start if hint is None else hint, task.upper))
    trials, guided_last, away = 0, False, 0
    floor = None
    while True:
        row = probe(task.at(units))
        trials += 1
        if row["status"] == "ok":
            lo, fits[units] = max(lo, units), row
            if floor is None:
                floor = row.get("load_reserved_gib")
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
        predicted = _predict(peaks, cap_gib, floor)
        if hint is not None and trials == 1:  # the hint's neighbour on the side it points to
            units = units + 1 if hi is None else units - 1
        elif hi is None:  # bracket from below: guided jump past the predicted boundary, or grow
            if predicted is not None and predicted > lo:
                units = min(task.upper, predicted + 1, 4 * max(lo, 1))
            elif hint is not None:
                away += 1
                units = min(task.upper, lo + 2**away)
            else:
                units = min(task.upper, 2 * max(lo, 1)) if lo else 1
            units = max(units, lo + 1)
        elif lo == 0 and hint is not None:  # below a hint that ran out of memory: step down, growing
            away += 1
            units = max(1, hi - 2**away)
        else:  # bisect, alternating a guided probe with the midpoint
            mid = (lo + hi) // 2
            use_guide = predicted is not None and lo < predicted < hi and not guided_last
            units, guided_last = (predicted, True) if use_guide else (mid, False)
    return {"lo": lo, "hi": hi, "fits": fits, "trials": trials}


HOST_HEADROOM_GIB = 16.0  # kept free on the host GPU: contexts, NVML's view, fragmentation
CONTEXT_GIB = 0.6  # a CUDA context on the H200, outside the allocator cap


SPARES = 1  # a started worker per slot: it preloads the next model setting, or takes over after a failure


def slot_gib(plan: emulation.Plan) -> float:
    """Host GPU memory a search slot holds at least: its worker's allocator cap, and its worker's
    and spare's CUDA contexts. While its spare preloads a model it holds that too
    (BoundaryRun.share)."""
    return plan.cap_gib + (1 + SPARES) * CONTEXT_GIB


def auto_parallel(entries, host) -> int:
    """Search slots for `entries` of (cfg, plan): as many as the host GPU holds of the smallest
    slot among them (a slot starts a group's searches only when its slot_gib fits what the
    running ones leave, GpuBudget, so larger caps run fewer at once); at most 8, and at most
    one per 2 CPU cores."""
    entries = [e for e in entries if e[0].device == "cuda" and e[1].cap_gib is not None]
    if host is None or not entries:
        return 1
    smallest = min(slot_gib(plan) for _, plan in entries)
    return max(1, min(8, (os.cpu_count() or 2) // 2, int((host.total_gib - HOST_HEADROOM_GIB) // smallest)))


class GpuBudget:
    """Host GPU memory shared by the slots: a slot takes the first waiting group whose share
    fits what is free, and gives the share back after the group (a share larger than the whole
    is clamped, so one group can always run)."""

    def __init__(self, total_gib: float):
        self.total = self.free = total_gib
        self.cond = threading.Condition()

    def take_first(self, waiting: list, share) -> tuple[object, float] | None:
        """Remove and return the first of `waiting` whose `share(item)` fits, with the share
        taken; wait while none fits; None when nothing is waiting. A large group at the head
        of the queue does not hold back smaller ones that fit beside the running groups."""
        with self.cond:
            while waiting:
                for i, item in enumerate(waiting):
                    gib = min(share(item), self.total)
                    if gib <= self.free:
                        self.free -= gib
                        return waiting.pop(i), gib
                self.cond.wait()
        return None

    def give(self, gib: float) -> None:
        with self.cond:
            self.free += gib
            self.cond.notify_all()


def _family(task: BoundaryTask) -> tuple[str, str]:
    """The task with its LoRA rank left out: boundaries of one family differ only in rank."""
    return task.axis, replace(task.base, lora_rank=0, lora_alpha=0).key


def _seq_family(task: BoundaryTask) -> tuple[str, str]:
    """The batch-1 sequence-length family of a batch task's setting."""
    return "seq_len", replace(task.base, lora_rank=0, lora_alpha=0, seq_len=0, batch_size=1).key


def run_boundaries(runs: list[BoundaryRun], parallel: int | None = None, progress=None, time_budget=None):
    """Search the boundaries of one or more profiles' runs together: their model groups share
    the slots and the host GPU's memory budget, so one profile's small models fill what another
    profile's large ones leave free, and no profile's tail leaves slots idle. Returns each run's
    summary."""
    started, started_utc = time.perf_counter(), utc_now()
    host = runs[0].host
    parallel = parallel or auto_parallel([(r.cfg, r.plan) for r in runs], host)
    cuda = runs[0].cfg.device == "cuda"
    budgeted = cuda and host is not None  # else no host GPU memory to share: every share is 0
    budget = GpuBudget(host.total_gib - HOST_HEADROOM_GIB if budgeted else float("inf"))
    entered: list[BoundaryRun] = []
    try:
        for run in runs:
            run.begin(parallel, progress)
            entered.append(run)
    except BaseException:  # e.g. another run holds a profile's results: nothing was searched
        for run in entered:
            run.store.unlock()
        raise
    try:
        _prepare_weights(runs)
        waiting = [(run, group) for run in runs for group in run.groups()]
        # the longest groups first (larger model, larger cap, more searches), so the slots end together
        waiting.sort(key=lambda item: -item[0].cost(item[1]))
        deadline = started + time_budget if time_budget else None

        def share(item) -> float:
            return item[0].share(item[1]) if budgeted else 0.0

        def slot() -> None:
            # One worker pool per slot, from group to group: a spare with its CUDA context
            # already created takes over for a group's first model setting, and one that
            # preloaded it for each later setting.
            pool = WorkerPool(spares=SPARES if cuda else 0, cuda=cuda)
            try:
                while deadline is None or time.perf_counter() < deadline:
                    taken = budget.take_first(waiting, share)
                    if taken is None:
                        return
                    (run, group), held = taken
                    try:
                        run.search_group(group, pool, deadline)
                    finally:
                        budget.give(held)
            finally:
                pool.close(graceful=False)

        n_groups = len(waiting)
        threads = [threading.Thread(target=slot, daemon=True) for _ in range(max(1, min(parallel, n_groups)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        wall = round(time.perf_counter() - started, 1)
        together = [r.cfg.profile.name for r in runs]
        summaries = [run.end(wall, started_utc, together) for run in entered]
    return summaries


def _prepare_weights(runs: list[BoundaryRun]) -> None:
    """Build each random-weight checkpoint once, before the slots race to build it."""
    needed = {}
    for run in runs:
        if not run.cfg.weights_path:
            for model in {t.base.model for t in run.todo}:
                needed[model] = run.cfg
    if not needed:
        return
    pool = WorkerPool()
    try:
        for model, cfg in sorted(needed.items()):
            payload = ("prepare", model, cfg.catalog[model].config, cfg.device)
            row = pool.run(payload, cfg.timeout_s)
            if row["status"] != "ok":
                raise RuntimeError(f"could not build random weights for {model}: {row.get('reason')}")
    finally:
        pool.close()


class BoundaryRun:
    """One profile's boundaries: its tasks, its files, the hints its searches share. Run it
    with run_boundaries (alone or with other profiles)."""

    def __init__(self, cfg: SweepConfig, ref_seq_lens, axes, reverify: bool = False):
        from bench.envinfo import nvml_gpu

        self.host = nvml_gpu() if cfg.device == "cuda" else None
        self.plan = emulation.plan(cfg.profile, cfg.device, self.host)
        self.tasks = plan_tasks(cfg, ref_seq_lens, axes)
        self.cfg = cfg
        self.reverify = reverify

        def path(stem, ext="csv"):
            return results_path(cfg.results_dir, cfg.profile, cfg.device, stem, ext)

        self.store = ResultsFile(path("boundaries"), BOUNDARY_FIELDNAMES, "boundary_key")
        self.probes = ResultsFile(path("boundary-trials"), PROBE_FIELDNAMES)
        self.runs_log = path("boundary-runs", "jsonl")
        self.lock = threading.Lock()

    def begin(self, parallel: int, progress) -> None:
        """Take the results lock and read what is recorded (the boundaries still to search)."""
        self.store.lock()
        try:
            self._begin(parallel, progress)
        except BaseException:
            self.store.unlock()
            raise

    def _begin(self, parallel: int, progress) -> None:
        self.parallel, self.progress = parallel, progress
        if self.cfg.worker_threads is None:  # the slots' workers share the cores
            threads = max(2, (os.cpu_count() or 2) // parallel)
            self.cfg = replace(self.cfg, worker_threads=threads)
        self.env = _env_columns(self.cfg, self.plan, self.host)
        done = set() if self.cfg.overwrite else self.store.keys()
        self.todo = [t for t in self.tasks if t.key not in done]
        self.found: dict[tuple, dict[int, int]] = {}  # family -> rank -> boundary units
        by_key = {t.key: t for t in self.tasks}
        for row in self.store.rows if not self.cfg.overwrite else []:
            if row["boundary_key"] in by_key:
                self._remember(by_key[row["boundary_key"]], row)
        self.counts = {"boundaries": 0, "trials": 0, "verified": 0}
        self.mirror = WandbMirror(
            self.cfg.wandb_mode, self.cfg.results_dir, self.cfg.profile.name, "boundary"
        )
        self.bar = progress.add_task(self.cfg.profile.name, total=len(self.todo)) if progress else None

    def groups(self) -> list[list[BoundaryTask]]:
        """The searches still to do, one group per model and precision. A slot takes a group at
        a time and searches its model settings (checkpointing x LoRA rank) one after another,
        each setting's sequence-length search before its batch searches, ranks in ascending
        order, so that each search after the first of its kind starts from a sibling's boundary
        (_hint); the hints come from the group alone, so a run's probes do not depend on timing.
        A worker keeps its setting's model from search to search, and while it does the slot's
        spare preloads the next setting's (search_group): only a group's first load is paid."""
        groups: dict[str, list[BoundaryTask]] = {}
        for task in self.todo:
            group = replace(
                task.base, seq_len=0, batch_size=0, lora_rank=0, lora_alpha=0, grad_ckpt=False
            ).key
            groups.setdefault(group, []).append(task)
        for group in groups.values():
            group.sort(
                key=lambda t: (t.base.grad_ckpt, t.base.lora_rank, t.axis != "seq_len", t.base.seq_len)
            )
        return list(groups.values())

    def cost(self, group: list[BoundaryTask]) -> float:
        """A rough order of a group's search time: model size x cap x searches."""
        return self._size(group[0].base.model) * (self.plan.cap_gib or 1.0) * len(group)

    def end(self, wall_s: float, started_utc: str, together: list[str]) -> dict:
        """Release the results and log the invocation (profiles run together share its wall
        time and started_utc, by which the speed script counts the invocation once)."""
        try:
            self.mirror.finish(BOUNDARY_FIELDNAMES)
            summary = {
                **self.counts,
                "left": len(self.todo) - self.counts["boundaries"],
                "profile": self.cfg.profile.name,
                "parallel": self.parallel,
                "spares": SPARES if self.cfg.device == "cuda" else 0,
                "wall_s": wall_s,
                "started_utc": started_utc,
                "together_with": [p for p in together if p != self.cfg.profile.name],
                "git_commit": self.env["git_commit"],
                "finished_utc": utc_now(),
            }
            with open(self.runs_log, "a") as f:
                f.write(json.dumps(summary) + "\n")
            return summary
        finally:
            self.store.unlock()

    def settings(self, group: list[BoundaryTask]) -> list[tuple]:
        """The worker payloads of a group's model settings (one per checkpointing setting and
        LoRA rank), in search order; none when its precision is unsupported (nothing runs)."""
        payloads = {}
        for task in group:
            if not self._unsupported(task):
                payload = trial_payload(self.cfg, self.plan, task.at(task.start))
                payloads.setdefault(model_key(*payload), payload)
        return list(payloads.values())

    def share(self, group: list[BoundaryTask]) -> float:
        """Host GPU memory a slot holds for this group: slot_gib, and while one model setting's
        searches run, the next setting's model in the spare that preloads it (the catalogue's
        estimate of a loaded model, never more than the cap it loads under)."""
        model = group[0].base.model
        loaded = self.cfg.catalog[model].loaded_gib_estimate() if model in self.cfg.catalog else math.inf
        preload = min(self.plan.cap_gib, loaded) if len(self.settings(group)) > 1 else 0.0
        return slot_gib(self.plan) + preload

    def search_group(self, group: list[BoundaryTask], pool: WorkerPool, deadline: float | None) -> None:
        """One group's searches in order, in the slot's worker pool. Its model settings follow
        one another, so while one setting's searches run, the pool's spare preloads the next
        setting's model."""
        pool.expect(self.settings(group))
        try:
            for task in group:
                if deadline is not None and time.perf_counter() > deadline:
                    return
                row = self._boundary(task, pool)
                with self.lock:
                    self.store.append(row, replace_key=self.cfg.overwrite)
                    self.mirror.log_row(self.store.rows[-1], task.key)
                    self._remember(task, row)
                    self.counts["boundaries"] += 1
                    self.counts["verified"] += row.get("verified") is True
                    if self.progress:
                        self.progress.advance(self.bar)
        finally:
            pool.expect([])  # a spare that preloaded a setting the deadline left out goes

    def _remember(self, task: BoundaryTask, row: dict) -> None:
        if row.get("status") == "ok" and str(row.get("max_value", "")) not in ("", "None"):
            units = int(row["max_value"]) // task.step
            self.found.setdefault(_family(task), {})[task.base.lora_rank] = units

    def _hint(self, task: BoundaryTask) -> int | None:
        """Where to start: the boundary of the same search at the nearest rank (the nearest
        smaller one first: a larger rank never fits more, by more than noise), else, for a
        batch search, the batch-1 sequence boundary's tokens over this length. None: no sibling."""
        with self.lock:
            ranks = dict(self.found.get(_family(task), {}))
            seq = dict(self.found.get(_seq_family(task), {})) if task.axis == "batch_size" else {}
        rank = task.base.lora_rank
        if ranks:
            nearest = min(ranks, key=lambda r: (r > rank, abs(r - rank)))
            return ranks[nearest] or None
        if seq:
            nearest = min(seq, key=lambda r: (r != rank, abs(r - rank)))
            tokens = seq[nearest] * SEQ_STEP
            return max(1, tokens // task.base.seq_len) if tokens else None
        return None

    def _unsupported(self, task: BoundaryTask) -> str | None:
        return emulation.unsupported_reason(task.base.dtype, self.cfg.profile, self.host, self.cfg.device)

    def _size(self, model: str) -> int:
        config = self.cfg.catalog[model].config if model in self.cfg.catalog else {}
        return config.get("hidden_size", 0) * config.get("num_hidden_layers", 0)

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
        reason = self._unsupported(task)
        if reason:
            return {
                **out,
                "status": "unsupported",
                "reason": reason,
                "search_trials": 0,
                "timestamp_utc": utc_now(),
            }
        started = time.perf_counter()
        hint = self._hint(task)
        found = search(task, lambda s: self._probe(pool, task, s, "search"), self.plan.cap_gib, hint)
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
                search_hint=None if hint is None else hint * task.step,
            )
            # Both ends of the bracket ran under the cap, each from a fresh load's allocator state
            # (nothing is inferred): they are the verification. --reverify runs them again,
            # each in a new worker.
            fit = "ok" if lo else None
            oom = "oom" if hi is not None else None
            if self.reverify:
                pool.retire()
                fit = self._probe(pool, task, task.at(lo), "verify")["status"] if lo else None
                pool.retire()
                oom = self._probe(pool, task, task.at(hi), "verify")["status"] if hi is not None else None
            out.update(
                verify_fit_status=fit,
                verify_oom_status=oom,
                verified=(fit in (None, "ok")) and (oom in (None, "oom")),
            )
        out["search_wall_s"] = time.perf_counter() - started
        out["timestamp_utc"] = utc_now()
        return out
