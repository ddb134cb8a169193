"""How fast the boundary search was, from the files the run itself wrote.

Per results/<profile>/: boundaries and trials per boundary (search, and --reverify re-runs where
there are any), search trials of the searches that started from a sibling's boundary (hinted) and
of those that started blind; per-trial overhead beyond the steps: the probe's wall time as the
search saw it minus the time of every step it ran (warm-up and timed) at its steady step time
(the median timed step), so a first step slowed by loading kernels counts as overhead, and a
probe that ran out of memory is all overhead; the same beyond the timed steps only (warm-up steps
counted as overhead, as earlier runs reported it); how the model got into the worker (loaded
during the trial, preloaded by the slot's spare while the previous model setting's probes ran,
or reused from the worker's previous probe of the same model); and the wall time of the runs
(boundary-runs.jsonl, one line per profile and invocation, so a profile finished over several
time-limited invocations adds up; profiles searched together in one invocation share its wall
time, marked "joint", and the total counts each invocation once).
Then, per profile, where a probe's overhead goes and how far each searched boundary point's
peaks are from its re-run in a fresh worker; and the overhead by how the probe got its model
(loaded, preloaded, reused) and how it ended, with the loads a run made per model setting.
Usage: python -m analysis.boundary_speed [RESULTS_DIR [PROFILE...]] [--commit PREFIX]  (default: every
profile there, every run)
"""

import csv
import json
import statistics
import sys
from collections import Counter
from pathlib import Path


def _steps(probe: dict) -> float:
    return sum(map(float, probe["step_times_s"].split(";"))) if probe["step_times_s"] else 0.0


def _all_steps(probe: dict) -> float:
    """Every step the probe ran, warm-up included, at its median timed step time."""
    if not probe["step_times_s"]:
        return 0.0
    times = sorted(map(float, probe["step_times_s"].split(";")))
    return statistics.median(times) * (int(probe["warmup_steps"]) + len(times))


def _read(path: Path, commit: str) -> list[dict]:
    """A CSV's rows, only those of `commit` (a prefix) when given."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["git_commit"].startswith(commit)]


def _runs(path: Path, commit: str) -> list[dict]:
    """boundary-runs.jsonl beside `path`: one line per invocation, those of `commit` when given."""
    runs_file = path.with_name("boundary-runs.jsonl")
    lines = runs_file.read_text().splitlines() if runs_file.exists() else []
    return [r for r in map(json.loads, lines) if r.get("git_commit", "").startswith(commit)]


def main(results: Path, profiles: list[str], commit: str = "") -> None:
    print(
        "| profile | boundaries (searched) | trials / boundary (search + re-run) | "
        "search trials / boundary: hinted (n), blind (n) | "
        "overhead / trial beyond the steps, mean (median) s | beyond the timed steps, mean (median) s | "
        "model loaded / preloaded / reused | median load (s) | parallel | wall (min) |"
    )
    print("|" + " --- |" * 10)
    total_trials = 0.0
    invocations: dict[str, float] = {}
    all_overhead: list[float] = []
    all_beyond_timed: list[float] = []
    for path in _files(results, profiles, "boundaries.csv"):
        bounds = _read(path, commit)
        probes = _read(path.with_name("boundary-trials.csv"), commit)
        searched = [b for b in bounds if b["status"] == "ok"]
        overhead = [float(p["probe_wall_s"]) - _all_steps(p) for p in probes]
        beyond_timed = [float(p["probe_wall_s"]) - _steps(p) for p in probes]
        reruns = sum(p["purpose"] == "verify" for p in probes)
        hinted = [int(b["search_trials"]) for b in searched if b.get("search_hint")]
        blind = [int(b["search_trials"]) for b in searched if not b.get("search_hint")]
        how = Counter(p["model_load"] for p in probes)
        loads = [float(p["load_s"]) for p in probes if p["model_load"] in LOADS]
        runs = _runs(path, commit)
        wall = sum(r["wall_s"] for r in runs)
        joint = any(r.get("together_with") for r in runs)
        for r in runs:
            invocations[r.get("started_utc") or f"{path}:{r['finished_utc']}"] = r["wall_s"]
        total_trials += len(probes)
        all_overhead += overhead
        all_beyond_timed += beyond_timed
        print(
            f"| {path.parent.name} | {len(bounds)} ({len(searched)}) | "
            f"{(len(probes) - reruns) / max(1, len(searched)):.1f} + {reruns / max(1, len(searched)):.1f} | "
            f"{_mean(hinted)} ({len(hinted)}), {_mean(blind)} ({len(blind)}) | "
            f"{_mean_median(overhead)} | {_mean_median(beyond_timed)} | "
            f"{how['loaded']} / {how['preloaded']} / {how['reused']} | "
            f"{statistics.median(loads):.1f} | "
            f"{','.join(sorted({str(r['parallel']) for r in runs}))} | "
            f"{wall / 60:.1f}{' joint' if joint else ''} |"
        )
    total_wall = sum(invocations.values())
    if all_overhead:
        print(
            f"| all | | | | {_mean_median(all_overhead)} | {_mean_median(all_beyond_timed)} | | | | "
            f"{total_wall / 60:.1f} in {len(invocations)} invocations, {int(total_trials)} trials "
            f"({total_wall / total_trials:.2f} s wall per trial) |"
        )


def _mean_median(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({statistics.median(values):.2f})"


def _warmup(ok: list[dict]) -> str:
    times = [float(p["warmup_s"]) for p in ok if p.get("warmup_s")]
    return f" ({statistics.mean(times):.2f})" if times else ""


def _files(results: Path, profiles: list[str], name: str) -> list[Path]:
    if not profiles:
        return sorted(results.glob(f"*/{name}"))
    return [results / p / name for p in sorted(profiles)]


def _mean(values: list[int]) -> str:
    return f"{statistics.mean(values):.1f}" if values else "-"


def breakdown(results: Path, profiles: list[str], commit: str = "") -> None:
    """Where a probe's overhead goes, and whether a search probe and its fresh re-run agree."""
    print(
        "\n| profile | fitting probe: in the worker beyond steps, mean s (of which the warm-up "
        "step, where recorded) | fitting probe: waiting "
        "for a worker, mean s | OOM probe wall, mean s | probes that OOMed | search/verify pairs "
        "by the search probe's model_load: pairs, max abs diff reserved / allocated GiB |"
    )
    print("|" + " --- |" * 6)
    for path in _files(results, profiles, "boundary-trials.csv"):
        probes = _read(path, commit)
        ok = [p for p in probes if p["status"] == "ok"]
        oom = [p for p in probes if p["status"] == "oom"]
        verify = {p["trial_key"]: p for p in ok if p["purpose"] == "verify"}
        pairs: dict[str, list[tuple[float, float]]] = {}
        for p in ok:
            v = verify.get(p["trial_key"])
            if p["purpose"] == "search" and v:
                diff = [abs(float(p[c]) - float(v[c])) for c in ("peak_reserved_gib", "peak_alloc_gib")]
                pairs.setdefault(p["model_load"], []).append(tuple(diff))
        agree = (
            "; ".join(
                f"{how}: {len(d)}, {max(r for r, _ in d):.3f} / {max(a for _, a in d):.3f}"
                for how, d in sorted(pairs.items())
            )
            or "no re-runs"
        )
        print(
            f"| {path.parent.name} | "
            f"{statistics.mean(float(p['trial_wall_s']) - _steps(p) for p in ok):.2f}{_warmup(ok)} | "
            f"{statistics.mean(float(p['probe_wall_s']) - float(p['trial_wall_s']) for p in ok):.2f} | "
            f"{statistics.mean(float(p['probe_wall_s']) for p in oom):.2f} | "
            f"{len(oom) / len(probes):.0%} | {agree} |"
        )


def by_load(results: Path, profiles: list[str], commit: str = "") -> None:
    """Overhead beyond the steps by how the probe got its model and how it ended, and how many
    loads a run made: one per model setting (model, rank, precision, checkpointing) is the
    least; a setting loaded again within one invocation means a worker was replaced mid-setting
    (an allocator that did not come back, or a failed probe); again in a later invocation, a
    resume."""
    print(
        "\n| profile | loaded: probes, mean overhead s | preloaded: probes, mean s | "
        "reused and fit: probes, mean s | reused and OOMed: probes, mean s | model settings | "
        "loads again within an invocation |"
    )
    print("|" + " --- |" * 7)
    every: list[tuple[str, float]] = []
    for path in _files(results, profiles, "boundary-trials.csv"):
        probes = _read(path, commit)
        starts = sorted(r["started_utc"] for r in _runs(path, commit))
        groups: dict[tuple[str, str], list[float]] = {}
        seen: set[tuple] = set()
        settings: set[tuple] = set()
        again = 0
        for p in probes:
            overhead = float(p["probe_wall_s"]) - _all_steps(p)
            every.append((p["model_load"], overhead))
            how = (p["model_load"], "fit" if p["status"] == "ok" else p["status"])
            groups.setdefault(how, []).append(overhead)
            setting = (p["model"], p["lora_rank"], p["dtype"], p["grad_ckpt"])
            settings.add(setting)
            invocation = sum(start <= p["timestamp_utc"] for start in starts)
            again += p["model_load"] in LOADS and (invocation, setting) in seen
            seen.add((invocation, setting))
        loaded = [v for (how, _), vs in groups.items() if how == "loaded" for v in vs]
        preloaded = [v for (how, _), vs in groups.items() if how == "preloaded" for v in vs]
        print(
            f"| {path.parent.name} | {_n_mean(loaded)} | {_n_mean(preloaded)} | "
            f"{_n_mean(groups.get(('reused', 'fit'), []))} | "
            f"{_n_mean(groups.get(('reused', 'oom'), []))} | {len(settings)} | {again} |"
        )
    total = sum(v for _, v in every)
    loaded = [v for how, v in every if how == "loaded"]
    preloaded = [v for how, v in every if how == "preloaded"]
    if every and loaded:
        print(
            f"| all | {_n_mean(loaded)} ({sum(loaded) / total:.0%} of all overhead) | "
            f"{_n_mean(preloaded)} ({sum(preloaded) / total:.0%}) | | | | |"
        )


LOADS = ("loaded", "preloaded")  # a probe whose worker loaded its model (during it, or before)


def _n_mean(values: list[float]) -> str:
    return f"{len(values)}, {statistics.mean(values):.2f}" if values else "0"


def cli(argv: list[str]) -> None:
    """[RESULTS_DIR [PROFILE...]] [--commit PREFIX]: only the rows and runs of that commit."""
    commit = ""
    if "--commit" in argv:
        at = argv.index("--commit")
        commit, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    where = Path(argv[0] if argv else "results")
    main(where, argv[1:], commit)
    breakdown(where, argv[1:], commit)
    by_load(where, argv[1:], commit)


if __name__ == "__main__":
    cli(sys.argv[1:])
