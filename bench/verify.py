"""`qlora-bench verify --profile P`: check the published (emulated) boundaries on the card itself.

On the profile's own card (or on the H200 against the h200 profile), a handful of the profile's
published batch-1 sequence boundaries are run again natively, no allocator cap: the longest
length that fit (expected to fit) and the next step (expected to run out of memory). The rows go
to results/<profile>/verify.csv, `emulated` false, with the boundary they check and what was
expected (`purpose`: verify-fit, verify-oom); `report` shows them beside the emulated tables,
with the native peak against the emulated one at the same point (the emulation's error).
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import click

from bench.errors import BenchUsageError

EXPECT = {"verify-fit": "ok", "verify-oom": "oom"}
KEY = ("boundary_key", "trial_key", "purpose")


def read_checked(path: Path) -> list[dict]:
    """A verify.csv's rows (trial columns and the probe's: boundary_key, purpose)."""
    from bench.results import ResultsFile
    from bench.schema import PROBE_FIELDNAMES

    return ResultsFile(path, PROBE_FIELDNAMES, KEY).rows


def chosen(rows: list[dict], count: int) -> list[dict]:
    """`count` published batch-1 sequence boundaries with both ends measured, spread evenly over
    them in a fixed order (recipe, model, precision, checkpointing, rank)."""
    from bench.spec import RECIPES

    usable = [
        r
        for r in rows
        if r["axis"] == "seq_len"
        and r["status"] == "ok"
        and int(r["max_value"] or 0) > 0
        and r["first_oom_value"]
    ]
    usable.sort(
        key=lambda r: (
            RECIPES.index(r.get("recipe") or "peft"),
            r["model"],
            r["dtype"],
            r["grad_ckpt"],
            int(r["lora_rank"]),
        )
    )
    if len(usable) <= count:
        return usable
    return (
        [usable[round(i * (len(usable) - 1) / (count - 1))] for i in range(count)]
        if count > 1
        else usable[:1]
    )


def points(rows: list[dict], count: int) -> list[tuple[dict, object, str]]:
    """(boundary row, trial spec, purpose) for both ends of each chosen boundary."""
    from bench.spec import TrialSpec

    out = []
    for row in chosen(rows, count):
        steps = re.search(r"\|w(\d+)m(\d+)(\||$)", row["boundary_key"])  # the search's steps
        base = TrialSpec.from_row(
            {**row, "seq_len": "1", "batch_size": "1", "warmup_steps": steps[1], "measured_steps": steps[2]}
        )
        out.append((row, replace(base, seq_len=int(row["max_value"])), "verify-fit"))
        out.append((row, replace(base, seq_len=int(row["first_oom_value"])), "verify-oom"))
    return out


def run_verify(profile_name: str, device: str, results_dir: Path, count: int, timeout_s: float) -> list[dict]:
    from bench.catalog import load_catalog
    from bench.config import RunConfig
    from bench.pool import WorkerPool
    from bench.profiles import load_profile
    from bench.results import ResultsFile, read_results
    from bench.runner import TrialRunner, host_gpu, results_path
    from bench.schema import PROBE_FIELDNAMES
    from bench.spec import Axes

    catalog = load_catalog()
    profile = load_profile(profile_name, set(catalog))
    cfg = RunConfig(profile=profile, catalog=catalog, axes=Axes(), device=device, results_dir=results_dir,
                    timeout_s=timeout_s)  # fmt: skip
    runner = TrialRunner(cfg, host_gpu(cfg))
    if runner.plan.emulated:
        raise BenchUsageError(
            f"verify runs on the card itself: this host's GPU is {runner.host.name}, not the card "
            f"profile {profile.name} describes; run it there (or, here, against a profile of this GPU)"
        )
    published = results_path(results_dir, profile, device, "boundaries")
    if not published.exists():
        raise BenchUsageError(f"{published}: no published boundaries of {profile.name} to verify")
    todo = points(read_results(published), count)
    if not todo:
        raise BenchUsageError(f"{published}: no boundary with both ends measured to verify")
    store = ResultsFile(results_path(results_dir, profile, device, "verify"), PROBE_FIELDNAMES, KEY)
    done = {tuple(r[k] for k in KEY) for r in store.rows}
    pool = WorkerPool(spares=0, cuda=device == "cuda")
    store.lock()
    try:
        for row, spec, purpose in todo:
            if (row["boundary_key"], spec.key, purpose) in done:
                continue
            measured = pool.run(runner.request(spec), timeout_s).row
            store.append(runner.row(spec, measured, boundary_key=row["boundary_key"], purpose=purpose))
    finally:
        pool.close()
        store.unlock()
    return [r for r in store.rows if r["boundary_key"] in {row["boundary_key"] for row, _, _ in todo}]


def section(title: str, published: list[dict], checked: list[dict]) -> list[str]:
    """The report's table of a profile's verify rows beside the boundaries they check."""
    by_key = {r["boundary_key"]: r for r in published}
    ends: dict[str, dict[str, dict]] = {}
    for row in checked:
        ends.setdefault(row["boundary_key"], {})[row["purpose"]] = row
    first = checked[0]
    lines = [
        f"## {title}, checked on the card itself",
        "",
        f"`qlora-bench verify` on {first['gpu_name'] or first['device']} (driver {first['driver'] or '-'}), "
        "natively, no allocator cap (`emulated` false), rows in verify.csv: each boundary's longest "
        "fit run again (expected to fit) and its next step (expected to run out of memory); peak "
        "reserved at the fit, emulated then native.",
        "",
        "| model | rank | setting | recipe | boundary (emulated) | at it | next step "
        "| peak reserved, emulated / native (GiB) | agrees |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, pair in ends.items():
        b = by_key.get(key)
        if b is None or set(pair) != set(EXPECT):
            continue
        fit, oom = pair["verify-fit"], pair["verify-oom"]
        agrees = fit["status"] == "ok" and oom["status"] == "oom"
        setting = f"{b['dtype']}, {'ckpt' if b['grad_ckpt'] == 'true' else 'no ckpt'}"
        native = f"{float(fit['peak_reserved_gib']):.2f}" if fit.get("peak_reserved_gib") else "-"
        emulated = f"{float(b['peak_reserved_gib']):.2f}" if b.get("peak_reserved_gib") else "-"
        lines.append(
            f"| {b['model']} | {b['lora_rank']} | {setting} | {b.get('recipe') or 'peft'} | "
            f"{b['max_value']} (then {b['first_oom_value']}) | {fit['status']} | {oom['status']} | "
            f"{emulated} / {native} | {'yes' if agrees else 'no'} |"
        )
    return lines + [""]


@click.command()
@click.option("--profile", "profile_name", required=True, help="The card this machine has (its profile).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--points", "count", type=click.IntRange(1, 64), default=6, show_default=True,
              help="Boundaries to check (each at its fit and its next step).")  # fmt: skip
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=900.0, show_default=True)
def verify(profile_name, device, results_dir, count, timeout_s):
    """Run a few published boundaries of PROFILE natively on its own card, to check the emulation."""
    try:
        rows = run_verify(profile_name, device, results_dir, count, timeout_s)
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(2)
    agree = {}
    for row in rows:
        agree.setdefault(row["boundary_key"], []).append(row["status"] == EXPECT[row["purpose"]])
    good = sum(all(v) and len(v) == 2 for v in agree.values())
    click.echo(f"{profile_name}: {good} of {len(agree)} boundaries as published on this card")
