"""Boundary searches on one host GPU: search slots, each a capped worker and a spare, share the
host's memory (GpuBudget) and take one model group at a time; several profiles' runs are
searched together (run_boundaries).

Each worker's allocator cap is per process, so concurrent searches do not change each other's
memory; they do share the GPU's SMs, which is why boundary rows carry no throughput.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from bench import emulation
from bench.envinfo import utc_now
from bench.gpus import slot_gpus
from bench.messages import PrepareWeights
from bench.pool import WorkerPool, WorkerStartFailed

if TYPE_CHECKING:
    from bench.boundary.run import BoundaryRun

# kept free on the host GPU: contexts, NVML's view, fragmentation; more when another job shares
# the GPU (a sweep beside a boundary search), or its workers could meet the card's end before
# their caps and record an OOM the emulated card would not have
HOST_HEADROOM_GIB = float(os.environ.get("QLORA_BENCH_HOST_HEADROOM_GIB", "16"))
CONTEXT_GIB = 0.6  # a CUDA context on the H200, outside the allocator cap


SPARES = 1  # a started worker per slot: it preloads the next model setting, or takes over after a failure


def slot_gib(plan: emulation.Plan) -> float:
    """Host GPU memory a search slot holds at least: its worker's allocator cap, and its worker's
    and spare's CUDA contexts. While its spare preloads a model it holds that too
    (BoundaryRun.share). A native card's slot (no cap) holds the whole card."""
    return math.inf if plan.cap_gib is None else plan.cap_gib + (1 + SPARES) * CONTEXT_GIB


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
    is clamped, so one group can always run). An idle slot waits while another is busy: a slot
    that fails hands its group back (hand_back), and the idle one takes it."""

    def __init__(self, total_gib: float, cond: threading.Condition | None = None, in_use: dict | None = None):
        self.total = self.free = total_gib
        # GPUs' budgets taking from one waiting list share one condition (boundary --gpus) and
        # one count of the groups taken and not given back
        self.cond = cond or threading.Condition()
        self.in_use = {"groups": 0} if in_use is None else in_use

    def take_first(self, waiting: list, share) -> tuple[object, float] | None:
        """Remove and return the first of `waiting` whose `share(item)` fits, with the share
        taken; wait while none fits; None when nothing is waiting and no group is out (one out
        may be handed back). A large group at the head of the queue does not hold back smaller
        ones that fit beside the running groups."""
        with self.cond:
            while waiting or self.in_use["groups"]:
                for i, item in enumerate(waiting):
                    gib = min(share(item), self.total)
                    if gib <= self.free:
                        self.free -= gib
                        self.in_use["groups"] += 1
                        return waiting.pop(i), gib
                self.cond.wait()
        return None

    def give(self, gib: float) -> None:
        with self.cond:
            self.free += gib
            self.in_use["groups"] -= 1
            self.cond.notify_all()

    def hand_back(self, waiting: list, item) -> None:
        """Put a failed slot's group (what is left of it) back for the other slots."""
        with self.cond:
            waiting.append(item)
            self.cond.notify_all()


def run_boundaries(
    runs: list[BoundaryRun], parallel: int | None = None, progress=None, time_budget=None, gpus=None
):
    """Search the boundaries of one or more profiles' runs together: their model groups share
    the slots and the host GPU's memory budget, so one profile's small models fill what another
    profile's large ones leave free, and no profile's tail leaves slots idle. Returns each run's
    summary. With `gpus` (several GPUs of one host, bench.gpus) each GPU has its own memory
    budget and `parallel` slots (auto: as many as one GPU holds), whose workers it pins."""
    started, started_utc = time.perf_counter(), utc_now()
    host = runs[0].host
    parallel = parallel or auto_parallel([(r.cfg, r.runner.plan) for r in runs], host)
    cuda = runs[0].cfg.device == "cuda"
    budgeted = cuda and host is not None  # else no host GPU memory to share: every share is 0
    native = cuda and any(r.runner.plan.cap_gib is None for r in runs)
    total = host.total_gib - HOST_HEADROOM_GIB if budgeted else float("inf")
    placed = slot_gpus(parallel, gpus) if gpus else [None] * parallel
    shared = threading.Condition()
    stopped, pools, threads = threading.Event(), [], []
    in_use = {"groups": 0}
    budgets = {gpu: GpuBudget(total, shared, in_use) for gpu in set(placed)}  # one per GPU (None: the one)
    entered: list[BoundaryRun] = []
    try:
        for run in runs:
            run.begin(len(placed), progress)
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
        # counted from here: building random-weight checkpoints is not searching (a budget that
        # ran out while they were built started no search at all)
        deadline = time.perf_counter() + time_budget if time_budget else None

        def share(item) -> float:
            return item[0].share(item[1]) if budgeted else 0.0

        def slot(gpu: int | None) -> None:
            # One worker pool per slot, from group to group (slot_pool)
            pool = slot_pool(cuda, native, gpu)
            pools.append(pool)
            budget = budgets[gpu]
            try:
                while not stopped.is_set() and (deadline is None or time.perf_counter() < deadline):
                    taken = budget.take_first(waiting, share)
                    if taken is None:
                        return
                    (run, group), held = taken
                    try:
                        if stopped.is_set():  # while this slot waited for the busy ones
                            return
                        run.search_group(group, pool, deadline)
                    except WorkerStartFailed as failed:  # twice in a row (WorkerPool): a slot fewer
                        left = f"its {len(group)} searches left go back for another slot (or a rerun)"
                        print(f"qlora-bench: a search slot stops, {failed}; {left}", file=sys.stderr)
                        budget.hand_back(waiting, (run, group))
                        return
                    finally:
                        budget.give(held)
            finally:
                pool.close(graceful=False)

        # as many slots as groups at most, spread over the GPUs (slot_gpus cycles through them)
        used = placed[: max(1, min(len(placed), len(waiting)))]
        threads = [threading.Thread(target=slot, args=(gpu,), daemon=True) for gpu in used]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):  # in steps: a signal caught by a slot's thread
            for t in threads:  # is handled in this one only when it runs (Ctrl-C, SIGTERM)
                t.join(0.2)
    finally:
        wall = round(time.perf_counter() - started, 1)
        together = [r.cfg.profile.name for r in runs]
        summaries = [run.end(wall, started_utc, together) for run in entered]
        _stop_slots(stopped, pools, threads)
    return summaries


def _stop_slots(stopped: threading.Event, pools: list[WorkerPool], threads: list[threading.Thread]) -> None:
    """After the run lines: slots still searching (Ctrl-C, SIGTERM, a failed write) run nothing
    more. Their workers are killed now, not after their searches (a spawned worker ignores both
    signals, and the interpreter's exit would wait for it), and the slots close their pools.
    (Not judged by is_alive: a join that the signal interrupted can leave it False.)"""
    stopped.set()
    for pool in list(pools):
        pool.kill()
    for t in threads:
        t.join(10)


def slot_pool(cuda: bool, native: bool, gpu: int | None = None) -> WorkerPool:
    """A search slot's worker pool: a spare with its CUDA context already created takes over for
    a group's first model setting, and one that preloaded it for each later setting. On a native
    card (no cap) no spare: its context and preloaded model would take the memory the searched
    one runs out of."""
    return WorkerPool(spares=SPARES if cuda and not native else 0, cuda=cuda, gpu=gpu)


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
            answer = pool.prepare(PrepareWeights(model, cfg.catalog[model].config, cfg.device), cfg.timeout_s)
            if not answer.ok:
                raise RuntimeError(f"could not build random weights for {model}: {answer.reason}")
    finally:
        pool.close()
