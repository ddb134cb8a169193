"""One profile's boundary search: its tasks, its files (boundaries.csv, boundary-trials.csv with
every probe, boundary-runs.jsonl with every invocation), the hints its searches share, and the
search of one model group in a slot's worker pool.

Each probe runs in a worker that just loaded its model (in the probe, or a slot's spare
preloaded it) or kept it from its last probe, only when the caching allocator came back, segment
for segment and block for block, to the state the load left (trial.ModelSlot.restore; never with
--fresh); any other worker is replaced by a new process. Re-running the two ends in new workers
gave the same peaks to the byte for all 268 boundaries of the ba44807 run, so that re-run is
optional (--reverify); probes run again by later runs since differ more often when a kept model
was on one side (up to 0.375 GiB, and every fit/OOM flip: `python -m analysis.bands results`).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import replace
from functools import partial

from bench.boundary.reuse import elsewhere, recorded_probe
from bench.boundary.schedule import SPARES, slot_gib
from bench.boundary.search import SEQ_STEP, BoundaryTask, band, plan_tasks, resume_hint, search, settled
from bench.config import BoundaryConfig
from bench.envinfo import utc_now
from bench.messages import TrialRequest
from bench.pool import WorkerPool
from bench.recipes import versions as recipe_versions
from bench.results import ResultsFile
from bench.runner import TrialRunner, check_recorded, host_gpu, results_path, unsupported
from bench.schema import BOUNDARY_FIELDNAMES, PROBE_FIELDNAMES
from bench.spec import TrialSpec
from bench.wblog import WandbMirror

# a probe's identity in boundary-trials.csv: its point, search and purpose, and the commit that ran
# it; the same commit probing it again (a search restarted after a crash, --overwrite) replaces its
# row, another commit's probe of it is added beside the earlier one, which is kept
PROBE_KEY = ("boundary_key", "trial_key", "purpose", "git_commit")


def _family(task: BoundaryTask) -> tuple[str, str]:
    """The task with its LoRA rank left out: boundaries of one family differ only in rank."""
    return task.axis, replace(task.base, lora_rank=0, lora_alpha=0).key


def _seq_family(task: BoundaryTask) -> tuple[str, str]:
    """The batch-1 sequence-length family of a batch task's setting."""
    return "seq_len", replace(task.base, lora_rank=0, lora_alpha=0, seq_len=0, batch_size=1).key


class BoundaryRun:
    """One profile's boundaries: its tasks, its files, the hints its searches share. Run it
    with run_boundaries (alone or with other profiles)."""

    def __init__(self, cfg: BoundaryConfig):
        self.cfg = cfg
        self.host = host_gpu(cfg)
        self.runner = TrialRunner(cfg, self.host)
        self.tasks = plan_tasks(cfg)

        def path(stem, ext="csv"):
            return results_path(cfg.results_dir, cfg.profile, cfg.device, stem, ext)

        self.store = ResultsFile(path("boundaries"), BOUNDARY_FIELDNAMES, "boundary_key")
        # a probe is one trial of one search for one purpose by one commit (PROBE_KEY)
        self.probes = ResultsFile(path("boundary-trials"), PROBE_FIELDNAMES, PROBE_KEY)
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
        check_recorded(self.cfg, self.store.path, self.store.rows)
        check_recorded(self.cfg, self.probes.path, self.probes.rows)
        if self.cfg.worker_threads is None:  # the slots' workers share the cores
            threads = max(2, (os.cpu_count() or 2) // parallel)
            self.runner.plan = replace(self.runner.plan, threads=threads)
        # a boundary whose search failed (a crash, a timeout) is searched again; its row replaced
        done = settled(self.store.rows, self.cfg.overwrite, self.cfg.band_gib)
        self.todo = [t for t in self.tasks if t.key not in done]
        self.found: dict[tuple, dict[int, int]] = {}  # family -> rank -> boundary units
        by_key = {t.key: t for t in self.tasks}
        for row in self.store.rows if not self.cfg.overwrite else []:
            if row["boundary_key"] in by_key:
                self._remember(by_key[row["boundary_key"]], row)
        self.counts = {"boundaries": 0, "trials": 0, "verified": 0, "reused": 0}
        self.ended = False  # the run line is written: a search still in flight records nothing
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
        return self._size(group[0].base.model) * (self.runner.plan.cap_gib or 1.0) * len(group)

    def end(self, wall_s: float, started_utc: str, together: list[str]) -> dict:
        """Release the results and log the invocation (profiles run together share its wall
        time and started_utc, by which the speed script counts the invocation once)."""
        with self.lock:  # a slot still searching (SIGTERM, Ctrl-C) records nothing past this line
            self.ended = True
        try:
            self.mirror.finish(BOUNDARY_FIELDNAMES)
            summary = {
                **self.counts,
                "left": len(self.todo) - self.counts["boundaries"],
                "profile": self.cfg.profile.name,
                "parallel": self.parallel,
                "spares": SPARES if self.cfg.device == "cuda" else 0,
                "fresh": self.cfg.fresh,  # every probe after a fresh load (--fresh)
                "wall_s": wall_s,
                "started_utc": started_utc,
                "together_with": [p for p in together if p != self.cfg.profile.name],
                "git_commit": self.runner.env["git_commit"],
                "finished_utc": utc_now(),
            }
            with open(self.runs_log, "a") as f:
                f.write(json.dumps(summary) + "\n")
            return summary
        finally:
            self.store.unlock()

    def settings(self, group: list[BoundaryTask]) -> list[TrialRequest]:
        """The worker requests of a group's model settings (one per checkpointing setting and
        LoRA rank), in search order; none when its precision is unsupported (nothing runs)."""
        requests = {}
        for task in group:
            if not self._unsupported(task):
                request = self.runner.request(task.at(task.start))
                requests.setdefault(request.model, request)
        return list(requests.values())

    def share(self, group: list[BoundaryTask]) -> float:
        """Host GPU memory a slot holds for this group: slot_gib, and while one model setting's
        searches run, the next setting's model in the spare that preloads it (--fresh: the same
        one's; the catalogue's estimate of a loaded model, never more than the cap)."""
        model = group[0].base.model
        loaded = self.cfg.catalog[model].loaded_gib_estimate() if model in self.cfg.catalog else math.inf
        cap = self.runner.plan.cap_gib
        again = len(self.settings(group)) > 1 or self.cfg.fresh  # --fresh: the same model again
        preload = min(cap, loaded) if cap is not None and again else 0.0
        return slot_gib(self.runner.plan) + preload

    def search_group(self, group: list[BoundaryTask], pool: WorkerPool, deadline: float | None) -> None:
        """One group's searches in order, in the slot's worker pool (its spare preloads the next
        model setting's model); each recorded search leaves `group`: a failed slot hands back the rest."""
        pool.expect(self.settings(group))
        try:
            while group:
                if self.ended or (deadline is not None and time.perf_counter() > deadline):
                    return
                self.record(group[0], self._boundary(group[0], pool))
                group.pop(0)
        finally:
            pool.expect([])  # a spare that preloaded a setting the deadline left out goes

    def record(self, task: BoundaryTask, row: dict) -> None:
        """A searched boundary's row (here or on a Dask worker): the CSV, W&B, hints, counts, bar."""
        with self.lock:
            if self.ended:  # its probes are recorded: the rerun reuses them (reuse.py)
                return
            self.store.append(row, replace_key=True)
            self.mirror.log_row(self.store.rows[-1], task.key)
            self._remember(task, row)
            self.counts["boundaries"] += 1
            self.counts["verified"] += str(row.get("verified")).lower() == "true"  # True, or CSV's "true"
            if self.progress:
                self.progress.advance(self.bar)

    def _remember(self, task: BoundaryTask, row: dict) -> None:
        if row.get("status") == "ok" and str(row.get("max_value", "")) not in ("", "None"):
            units = int(row["max_value"]) // task.step
            self.found.setdefault(_family(task), {})[task.base.lora_rank] = units

    def _hint(self, task: BoundaryTask) -> int | None:
        """Where to start: the boundary of the same search at the nearest rank (the nearest
        smaller one first: a larger rank never fits more, by more than noise), else, for a batch
        search, the batch-1 sequence boundary's tokens over this length, else resume_hint."""
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
        # not from this commit's own probes: _probe reuses them, and its search replays their path
        earlier = elsewhere(self.probes.rows, self.runner.env["git_commit"])
        return resume_hint(task, [] if self.cfg.overwrite else earlier)

    def _unsupported(self, task: BoundaryTask) -> str | None:
        return unsupported(self.cfg, self.host, task.at(task.start))

    def _size(self, model: str) -> int:
        config = self.cfg.catalog[model].config if model in self.cfg.catalog else {}
        return config.get("hidden_size", 0) * config.get("num_hidden_layers", 0)

    def _probe(
        self, pool: WorkerPool, task: BoundaryTask, spec: TrialSpec, purpose: str, cap: float | None = None
    ) -> dict:
        request, extra = self.runner.request(spec), {}
        if cap is not None:  # a band's search: the same card with another cap
            request = replace(request, plan=replace(request.plan, cap_gib=cap))
            extra = {"mem_cap_gib": round(cap, 4)}
        new = self.runner.row(spec, {}, boundary_key=task.key, purpose=purpose, **extra)
        with self.lock:  # a probe this commit already ran here (a search cut short, run again)
            if self.ended:  # stopped (Ctrl-C, SIGTERM): run nothing more
                return {"status": "error", "reason": "the run was stopped"}
            done = None if self.cfg.overwrite else recorded_probe(self.probes.rows, new, self.cfg.fresh)
            self.counts["reused"] += done is not None
        if done is not None:
            return done
        t0 = time.perf_counter()
        row = pool.run(request, self.cfg.timeout_s, fresh=self.cfg.fresh).row
        wall = time.perf_counter() - t0
        full = self.runner.row(spec, row, boundary_key=task.key, purpose=purpose, probe_wall_s=wall, **extra)
        with self.lock:
            if self.ended:  # the run was stopped while this probe ran
                return row
            self.probes.append(full, replace_key=True)
            self.counts["trials"] += 1
        return row

    def _band(self, task: BoundaryTask, pool: WorkerPool, at_cap: dict) -> dict:
        """search.band: the boundary at the cap --band GiB lower and higher, in this slot's pool."""
        cap, moved_by = self.runner.plan.cap_gib, self.cfg.band_gib
        return band(task, partial(self._probe, pool, task), at_cap, cap, moved_by)

    def _boundary(self, task: BoundaryTask, pool: WorkerPool) -> dict:
        spec = task.base
        out = {  # the boundary's columns of the environment and the spec (the searched axis blank)
            **{k: v for k, v in {**self.runner.env, **spec.to_row()}.items() if k in BOUNDARY_FIELDNAMES},
            "boundary_key": task.key,
            "recipe_versions": recipe_versions(spec.recipe),
            "axis": task.axis,
            "step": task.step,
            "upper_limit": task.upper * task.step,
            "seq_len": spec.seq_len if task.axis != "seq_len" else None,
            "batch_size": spec.batch_size if task.axis != "batch_size" else None,
            "eval_batch_size": spec.eval_batch_size if task.axis != "eval_batch_size" else None,
        }
        reason = self._unsupported(task)
        if reason:
            out.update(status="unsupported", reason=reason, search_trials=0, timestamp_utc=utc_now())
            return out
        started = time.perf_counter()
        hint = self._hint(task)
        probe = partial(self._probe, pool, task, purpose="search")
        found = search(task, probe, self.runner.plan.cap_gib, hint, self.cfg.safe_scan)
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
            if "safe" in found:
                out["safe_value"] = found["safe"] * task.step
                out["oom_below"] = ";".join(str(u * task.step) for u in found["inversions"])
            out.update(self._band(task, pool, found))
            # Both ends of the bracket ran under the cap (nothing is inferred), each after a fresh
            # load or on a kept model with the allocator back in the load's state: they are the
            # verification. --reverify runs them again, each in a new worker.
            fit = "ok" if lo else None
            oom = "oom" if hi is not None else None
            if self.cfg.reverify:
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
