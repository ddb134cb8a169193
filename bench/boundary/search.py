"""The pure boundary search: what a boundary is (BoundaryTask), every boundary of a grid
(plan_tasks), and the guided bisection that finds one from probes (search). No processes, no
files: `search` takes the probe as a function.

Memory grows with sequence length and batch size, so the search brackets the boundary (from a
sibling's boundary when one is known: the same search at another LoRA rank, or the batch-1
sequence boundary for a batch search; else from below, by a line of peak reserved memory
against the cap), then bisects, alternating fit-guided and midpoint probes so that a poor fit
never costs more than twice plain bisection. It ends only when the boundary ran and fit and
boundary + one step ran and ran out of memory: those two runs are the verification (none of it
is inferred).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from functools import partial

from bench.config import BoundaryConfig
from bench.schema import BAND_COLUMNS
from bench.spec import TrialSpec

SEQ_STEP = 64
SEQ_LIMIT = 32768
BATCH_LIMIT = 256
SEQ_START = 512


@dataclass(frozen=True)
class BoundaryTask:
    axis: str  # seq_len | batch_size | eval_batch_size
    base: TrialSpec  # the searched axis is overwritten per probe
    upper: int  # in units of `step`
    step: int
    start: int  # first probe, in units

    @property
    def key(self) -> str:
        if self.axis == "eval_batch_size":  # an added field: in the key only when not 0
            return f"{self.axis}|" + self.at(1).key.replace("|eval_batch_size=1", "|eval_batch_size=*")
        short = "s" if self.axis == "seq_len" else "b"
        return f"{self.axis}|" + self.at(0).key.replace(f"|{short}=0|", f"|{short}=*|")

    def at(self, units: int) -> TrialSpec:
        return replace(self.base, **{self.axis: units * self.step})


def plan_tasks(cfg: BoundaryConfig) -> list[BoundaryTask]:
    """Every boundary of the grid: per model x rank x dtype x checkpointing (x any added axis),
    the longest sequence at batch 1, the largest batch at each reference length and, when asked
    for, the largest evaluation batch after training at batch 1 at each reference length."""
    tasks = []
    names = ["model", "lora_rank", "dtype", "grad_ckpt"]
    searched = ("seq_len", "batch_size", "eval_batch_size" if "eval_batch_size" in cfg.search_axes else "")
    names += [n for n, v in cfg.axes.values.items() if n not in (*names, *searched) and len(v) > 1]
    for combo in itertools.product(*(cfg.axes[n] for n in names)):
        base = cfg.axes.spec(**dict(zip(names, combo, strict=True)), seq_len=0, batch_size=1)
        model = base.model
        context = cfg.catalog[model].context_len if model in cfg.catalog else SEQ_LIMIT
        limit = min(context, SEQ_LIMIT)
        if "seq_len" in cfg.search_axes:
            tasks.append(
                BoundaryTask("seq_len", base, limit // SEQ_STEP, SEQ_STEP, min(SEQ_START, limit) // SEQ_STEP)
            )
        if "batch_size" in cfg.search_axes:
            for seq in cfg.ref_seq_lens:
                if seq <= limit:
                    tasks.append(
                        BoundaryTask(
                            "batch_size", replace(base, seq_len=seq, batch_size=0), BATCH_LIMIT, 1, 1
                        )
                    )
        if "eval_batch_size" in cfg.search_axes:  # training at batch 1, then its evaluation
            for seq in cfg.ref_seq_lens:
                if seq <= limit:
                    tasks.append(
                        BoundaryTask(
                            "eval_batch_size",
                            replace(base, seq_len=seq, eval_batch_size=0),
                            BATCH_LIMIT,
                            1,
                            1,
                        )
                    )
    return tasks


def settled(rows: list[dict], overwrite: bool, band_gib: float) -> set[str]:
    """Keys of recorded boundaries a run leaves alone: none with --overwrite; else each whose
    search did not fail (a failed one is searched again, its row replaced) and, when a band is
    asked for, that has one (a boundary recorded without a band is searched again, band and
    safe value included, so that --band over published tables resumes like any run)."""
    if overwrite:
        return set()
    unbanded = {"", "None"}
    return {
        r["boundary_key"]
        for r in rows
        if r["status"] != "error"
        and not (
            band_gib
            and r["status"] == "ok"
            and {str(r.get("band_low") or ""), str(r.get("band_high") or "")} <= unbanded
        )
    }


def resume_hint(task: BoundaryTask, rows: list[dict]) -> int | None:
    """Where a search cut short (a time limit, a killed run) left off, from its recorded
    probes: the largest value that fit below the smallest that ran out of memory. Only where
    to start (for probes another commit ran; the same commit's are reused: reuse.py):
    the boundary is still settled by this run's own probes."""
    fits, ooms = set(), set()
    for row in rows:
        if row.get("boundary_key") != task.key or row.get("purpose") != "search":
            continue
        units = int(float(row[task.axis])) // task.step
        (fits if row.get("status") == "ok" else ooms if row.get("status") == "oom" else set()).add(units)
    top = min(ooms, default=None)
    below = [u for u in fits if top is None or u < top]
    return max(below) if below else None


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


def search(
    task: BoundaryTask,
    probe,
    cap_gib: float | None,
    hint: int | None = None,
    safe_scan: int = 0,
    known: tuple[int, int | None] = (0, None),
) -> dict:
    """Largest fitting units. `probe(spec) -> row`. Returns lo, hi (None: fits to the limit),
    the fitting rows, the trial count, or an error; with `safe_scan`, also the safe units (every
    probed value at or below them fit: safe_scan()) and the values below lo that ran out of
    memory (inversions: memory is not monotone near the cap).

    Without a hint the search brackets from `task.start` upwards. With a hint (a close
    sibling's boundary) it probes the hint, then one step past it on the side its result
    points to, so a good hint settles the boundary in two trials; a poor one continues by
    growing steps away from it and then bisection. `known`: units known, without a probe, to
    fit and to run out of memory (band_bounds: what the search at the card's own cap proves for
    a band's); the search probes only between them."""
    fits: dict[int, dict] = {}
    ooms: set[int] = set()
    lo, hi = known
    if (hi is not None and hi - lo <= 1) or (hi is None and lo >= task.upper):
        return {"lo": lo, "hi": hi, "fits": fits, "trials": 0}
    below = task.upper if hi is None else hi - 1  # the largest value left open
    units = max(lo + 1, min(task.start if hint is None else hint, below))
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
            ooms.add(units)
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
            units = units + 1 if row["status"] == "ok" else units - 1
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
    found = {"lo": lo, "hi": hi, "fits": fits, "trials": trials}
    if safe_scan and lo:
        found.update(_scan_below(task, probe, lo, fits, ooms, safe_scan))
        found["trials"] += found.pop("scan_trials")
    return found


def _scan_below(task: BoundaryTask, probe, lo: int, fits: dict, ooms: set, count: int) -> dict:
    """Walk down from lo - 1, probing what the search did not, until `count` values in a row fit
    below the lowest value that ran out of memory (or below lo when none did). safe: the largest
    value with every probed value at or below it fitting; inversions: the values below lo that
    ran out of memory."""
    units, run, trials = lo - 1, 0, 0
    while units >= 1 and run < count:
        if units not in fits and units not in ooms:
            row = probe(task.at(units))
            trials += 1
            if row["status"] == "ok":
                fits[units] = row
            elif row["status"] == "oom":
                ooms.add(units)
            else:
                return {
                    "error": f"{row['status']} at {task.axis}={units * task.step}: {row.get('reason', '')}",
                    "scan_trials": trials,
                }
        run = 0 if units in ooms else run + 1
        units -= 1
    inversions = sorted(u for u in ooms if u < lo)
    return {
        "safe": (inversions[0] - 1) if inversions else lo,
        "inversions": inversions,
        "scan_trials": trials,
    }


def band_bounds(found: dict, cap_gib: float, moved_gib: float) -> tuple[int, int | None]:
    """What a search at the card's cap proves, without a probe, for the same search at a moved
    cap: `known` for search(). A run whose peak reserved stayed at or below the moved cap never
    reached it, and the allocator acts differently only when a request would cross the cap, so
    it fits there too (every fit, for a higher cap). An out-of-memory needed more than the card's
    cap held at that point, whatever was cached, so it runs out under a lower cap too. Checked
    against the bands measured before this was used: analysis.bands (floors)."""
    fits = found["fits"]
    if moved_gib >= cap_gib:
        return found["lo"], None
    low = [u for u, r in fits.items() if u <= found["lo"] and (r.get("peak_reserved_gib") or 0) <= moved_gib]
    return max(low, default=0), found["hi"]


def band(task: BoundaryTask, probe, at_cap: dict, cap_gib: float | None, band_gib: float) -> dict:
    """The boundary searched again with the cap `band_gib` lower and higher (`probe(spec, purpose=,
    cap=)`), each from the boundary as its hint, probing only what the search at the card's cap
    (`at_cap`) leaves open (band_bounds): band_low and band_high (None where that search failed)."""
    if not band_gib or cap_gib is None:
        return {}
    out = {}
    for column, sign in zip(BAND_COLUMNS, (-1, 1), strict=True):
        moved = cap_gib + sign * band_gib
        found = search(
            task, partial(probe, purpose=column, cap=moved), moved, at_cap["lo"] or None,
            known=band_bounds(at_cap, cap_gib, moved),
        )  # fmt: skip
        out[column] = None if "error" in found else found["lo"] * task.step
    return out
