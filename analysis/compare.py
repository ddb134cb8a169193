"""`qlora-bench compare A B ...`: the measured OOM boundaries of GPUs side by side.

Per model and setting (precision x checkpointing, at the smallest LoRA rank measured), per
profile: the longest sequence that trains at batch 1 (0: nothing fits; `n/a`: no native bf16)
and the largest batch at a reference length. Only measured boundaries are shown; a profile with
none says so and how to measure it. Throughput is projected (analysis/projection.py) and
labelled so: an emulated profile's step times are the host GPU's, not the card's.
"""

from __future__ import annotations

from pathlib import Path

from analysis.data import load, model_order
from analysis.projection import calibrated
from analysis.summary import TRL_NOTE, stacks
from bench.catalog import load_catalog
from bench.errors import BenchUsageError
from bench.profiles import load_profile

SETTINGS = [("fp16", True), ("fp16", False), ("bf16", True), ("bf16", False)]


def compare(names: list[str], results_dir: Path, models: list[str] | None, ref_seq: int) -> dict:
    """{profiles, missing: {name: why}, rows: [{model, setting, <profile>: (max_seq, max_batch)}]}"""
    if len(names) < 2:
        raise BenchUsageError("compare needs two or more profiles, e.g. `qlora-bench compare t4 l4`")
    catalog = set(load_catalog())
    profiles = [load_profile(n, catalog) for n in names]  # unknown names: a clear error
    unknown = [m for m in models or [] if m not in catalog]
    if unknown:
        raise BenchUsageError(f"--model: unknown {unknown}; known: {sorted(catalog)}")
    results = load(results_dir)
    data = results.boundaries
    projection = calibrated(results)
    rows_of = {}
    missing = {}
    for p in profiles:
        rows = data[(data.profile == p.name)] if not data.empty else data
        if rows.empty:
            missing[p.name] = (
                f"no measured boundaries under {results_dir}/{p.name}/ "
                f"(measure them: qlora-bench boundary --profile {p.name})"
            )
        rows_of[p.name] = rows
    if len(missing) == len(profiles):
        raise BenchUsageError("; ".join(f"{k}: {v}" for k, v in missing.items()))
    present = set().union(*(set(r.model) for r in rows_of.values() if not r.empty))
    wanted = [m for m in model_order() if m in (set(models) if models else present)]
    error = projection.calibration()["p90_error_left_out"] if projection is not None else None
    table = []
    for model in wanted:
        for dtype, ckpt in SETTINGS:
            line = {"model": model, "setting": f"{dtype}, {'ckpt' if ckpt else 'no ckpt'}"}
            speeds = {}
            for p in profiles:
                line[p.name], longest = _cell(rows_of[p.name], model, dtype, ckpt, ref_seq, p.name in missing)
                if projection is not None and longest is not None and longest >= 512:  # 512 fits
                    speeds[p.name] = 512 / projection.step_s(p, model, 512, 1, ckpt, dtype)
                    line[p.name] += f" / ~{speeds[p.name]:,.0f}"
            line["unranked"] = _overlapping(speeds, error)
            if any(v not in ("not measured", "not in grid") for k, v in line.items() if k in rows_of):
                table.append(line)
    return {"profiles": [p.name for p in profiles], "missing": missing, "rows": table, "ref_seq": ref_seq,
            "error": error, "stacks": _stacks(results_dir, [p.name for p in profiles], wanted)}  # fmt: skip


def _stacks(results_dir: Path, names: list[str], models: list[str]) -> list[dict]:
    """Per model and setting, how far each training stack gets on each compared card (the
    purchase summary's table, analysis.summary.stacks): 'peft 960 · liger 4736 · ...'."""
    from bench.spec import RECIPES

    cells: dict[tuple, dict[str, str]] = {}
    for (profile, model, dtype, _, rank), by in stacks(Path(results_dir)).items():
        if profile in names and model in models:
            text = " · ".join(f"{r} {by[r]}" for r in RECIPES if r in by)
            cells.setdefault((model, f"{dtype}, ckpt, r{rank}"), {})[profile] = text
    order = {m: i for i, m in enumerate(models)}
    keys = sorted(cells, key=lambda k: (order[k[0]], k[1]))
    return [{"model": m, "setting": s, **cells[m, s]} for m, s in keys]


def _overlapping(speeds: dict[str, float], error: float | None) -> list[tuple[str, str]]:
    """Pairs of cards whose projected speeds' bands (speed / (1 + error) to speed x (1 + error))
    overlap: the projection cannot say which is faster."""
    names = sorted(speeds)
    return [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if error is not None and max(speeds[a], speeds[b]) / min(speeds[a], speeds[b]) <= (1 + error) ** 2
    ]


def _cell(rows, model, dtype, ckpt, ref_seq, missing) -> tuple[str, int | None]:
    """The cell's text, and the longest sequence at batch 1 (None: not measured)."""
    if missing:
        return "not measured", None
    rows = rows[(rows.model == model) & (rows["dtype"] == dtype) & (rows.grad_ckpt == ckpt)]
    if rows.empty:
        return "not in grid", None
    if (rows.status == "unsupported").all():
        return "n/a (no bf16)", None
    rank = rows.lora_rank.min()
    rows = rows[(rows.lora_rank == rank) & (rows.status == "ok")]
    seq = rows[rows.axis == "seq_len"]
    batch = rows[(rows.axis == "batch_size") & (rows.seq_len == ref_seq)]
    seq_text = "?" if seq.empty else _value(seq.iloc[0])
    batch_text = "?" if batch.empty else _value(batch.iloc[0])
    return f"{seq_text} / {batch_text}", None if seq.empty else int(seq.iloc[0].max_value)


def _value(row) -> str:
    value = int(row.max_value)
    limit = int(row.upper_limit)
    return f"≥{value}" if value >= limit else str(value)


def render(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"Longest sequence at batch 1 / largest batch at {result['ref_seq']} tokens "
        "(measured boundaries, peft recipe, smallest LoRA rank; 0: does not fit) / tokens/s at 512 tokens, "
        "batch 1, PROJECTED (analysis/projection.py)"
    )
    table.add_column("model")
    table.add_column("setting")
    for name in result["profiles"]:
        table.add_column(name, justify="right")
    for line in result["rows"]:
        table.add_row(line["model"], line["setting"], *(line[n] for n in result["profiles"]))
    console.print(table)
    for name, why in result["missing"].items():
        console.print(f"{name}: {why}")
    console.print(
        "tokens/s are projected from the card's datasheet and the H200's measured steps, not "
        "measured on the card (emulated rows ran on a larger GPU, whose step time is not the card's)."
    )
    if result.get("stacks"):
        stack_table = Table(
            title="How far each training stack gets: longest sequence at batch 1 per recipe, with "
            "checkpointing (measured boundaries; the table above is peft's; docs/recipes.md)"
        )
        for column in ("model", "setting", *result["profiles"]):
            stack_table.add_column(column)
        for line in result["stacks"]:
            cards = (line.get(name, "") for name in result["profiles"])
            stack_table.add_row(line["model"], line["setting"], *cards)
        console.print(stack_table)
        if any("trl fails" in cell for line in result["stacks"] for cell in line.values()):
            console.print(TRL_NOTE.replace("`", ""))
    unranked = [(line, pair) for line in result["rows"] for pair in line["unranked"]]
    if unranked:
        console.print(
            f"Not ranked (their projected tokens/s lie within each other's band, +/-"
            f"{result['error']:.0%}, the projection's 90th-percentile error on the H200's own steps): "
            + "; ".join(f"{line['model']} {line['setting']}: {a} ~ {b}" for line, (a, b) in unranked)
        )
