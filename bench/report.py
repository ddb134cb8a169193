"""Published OOM-boundary tables, made from the boundary CSVs alone (same CSVs, same bytes)."""

from __future__ import annotations

from pathlib import Path

from bench.catalog import load_catalog
from bench.errors import BenchUsageError
from bench.results import read_boundaries, read_results, value_text, variant_title, versions_text
from bench.spec import RECIPES

COLUMNS = [("fp16", "true"), ("fp16", "false"), ("bf16", "true"), ("bf16", "false")]
HEAD = {
    ("fp16", "true"): "fp16, ckpt",
    ("fp16", "false"): "fp16, no ckpt",
    ("bf16", "true"): "bf16, ckpt",
    ("bf16", "false"): "bf16, no ckpt",
}


def longer_also_fits(rows: list[dict], model: str, rank: str, dtype: str, grad_ckpt: str) -> int | None:
    """A batch search's length beyond the longest-sequence boundary at which batch 1 fit, or None.
    Near the cap memory is not monotone in length (allocator fragmentation), so it happens."""
    same = [
        r
        for r in rows
        if (r["model"], r["lora_rank"], r["dtype"], r["grad_ckpt"]) == (model, rank, dtype, grad_ckpt)
    ]
    seq = [int(r["max_value"]) for r in same if r["axis"] == "seq_len" and r["status"] == "ok"]
    longer = [
        int(r["seq_len"])
        for r in same
        if r["axis"] == "batch_size"
        and r["status"] == "ok"
        and int(r["max_value"]) >= 1
        and seq
        and int(r["seq_len"]) > seq[0]
    ]
    return max(longer) if longer else None


def _cell(row: dict | None, rows: list[dict] = ()) -> str:
    """max value; '≥' when it fit up to the search limit; † when verification disagreed;
    ‡ when a longer sequence also fit (in a batch search)."""
    if row is None:
        return ""
    if row["status"] == "unsupported":
        return "n/a"
    if row["status"] != "ok":
        return "error"
    text = value_text(row)
    if row["verified"] != "true":
        text += "†"
    if row["axis"] == "seq_len" and longer_also_fits(
        rows, row["model"], row["lora_rank"], row["dtype"], row["grad_ckpt"]
    ):
        text += "‡"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def profile_section(name: str, rows: list[dict], model_order: list[str]) -> list[str]:
    seq = {
        (r["model"], r["lora_rank"], r["dtype"], r["grad_ckpt"]): r for r in rows if r["axis"] == "seq_len"
    }
    batches = {  # largest batch, and largest evaluation batch, at reference lengths
        axis: {
            (r["model"], r["lora_rank"], r["dtype"], r["grad_ckpt"], r["seq_len"]): r
            for r in rows
            if r["axis"] == axis
        }
        for axis in ("batch_size", "eval_batch_size")
    }
    batch = batches["batch_size"]
    order = {m: i for i, m in enumerate(model_order)}
    combos = sorted(
        {(r["model"], int(r["lora_rank"])) for r in rows},
        key=lambda mr: (order.get(mr[0], len(order)), mr[0], mr[1]),
    )
    present = [
        c for c in COLUMNS if any((k[2], k[3]) == c for k in [*seq, *batch, *batches["eval_batch_size"]])
    ]
    first = rows[0]
    where = (
        f"emulated on {first['host_gpu']}, PyTorch allocator capped at {first['mem_cap_gib']} GiB"
        if first["emulated"] == "true"
        else f"measured on {first['gpu_name']}"
    )
    commits = ", ".join(sorted({r["git_commit"][:7] for r in rows}))
    # the recipe's own libraries (trl=1.15.0;datasets=4.8.5): every set the rows carry, so a table
    # whose rows came from two versions of its stack says so
    stacks = sorted({r.get("recipe_versions") or "" for r in rows} - {""})
    libs = "".join(f", {versions_text(s)}" for s in stacks)
    lines = [
        f"## {name}",
        "",
        f"{where}; NF4 + LoRA on all linear layers, AdamW, "
        f"driver {first['driver']}, torch {first['torch']}{libs}, commit {commits}; "
        f"{len(rows)} boundaries recorded.",
        "",
    ]
    if seq:
        lines += ["Longest sequence (tokens, 64-token steps) at batch 1:", ""]
        lines += _table(
            ["model", "rank", *[HEAD[c] for c in present]],
            [[m, str(r), *[_cell(seq.get((m, str(r), *c)), rows) for c in present]] for m, r in combos],
        )
        lines.append("")
    titles = {
        "batch_size": "Largest batch at {} tokens:",
        "eval_batch_size": "Largest evaluation batch (after training at batch 1) at {} tokens:",
    }
    for axis, found in batches.items():
        if not found:
            continue
        refs = sorted({int(k[4]) for k in found})
        lines += [titles[axis].format(" / ".join(map(str, refs))), ""]
        body = []
        for m, r in combos:
            cells = []
            for c in present:
                values = [_cell(found.get((m, str(r), *c, str(s)))) or "-" for s in refs]
                cells.append("n/a" if set(values) == {"n/a"} else " / ".join(values))
            body.append([m, str(r), *cells])
        lines += _table(["model", "rank", *[HEAD[c] for c in present]], body)
        lines.append("")
    return lines


def render(results_dir: Path) -> str:
    model_order = list(load_catalog())
    lines = [
        "# OOM boundaries",
        "",
        "Made by `qlora-bench report` from `results/<profile>/boundaries.csv`; every probe is in "
        "`boundary-trials.csv` beside it. A cell is the largest value that trained without running "
        "out of memory; the next step (64 tokens, or one more sequence) ran out, both run (not "
        "inferred) under the card's cap, from the allocator state a fresh load leaves. `≥` the "
        "search limit (model context or 32k tokens; 256 sequences) still fit; `0` even the "
        "smallest OOMed; `n/a` the card has no bf16; `†` a re-run in a new fresh worker "
        "(`--reverify`) disagreed (allocator noise at the cap); `‡` a longer sequence also fit at "
        "batch 1 (in the batch search): near the cap, memory is not monotone in length, because "
        "an OOM is decided on reserved memory, fragmentation included; `§` a scan below the "
        "boundary (`--safe-scan`) found values that ran out of memory: the safe value (every "
        "probed value at or below it fit) first, the largest that fit in brackets; `[a-b]` the "
        "band: the boundary searched again with the cap `--band` GiB lower and higher (shown "
        "where it differs from the value), `[?]` none searched yet; `¶N` a later probe of the same "
        "boundary under the same cap, in a search cut before it recorded one, ran out of memory at "
        "N, at or below the value (read it as a band down to N-1 until the band search settles it).",
        "",
    ]
    sections = 0
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        by_variant: dict[str, list[dict]] = {}  # one table per recipe, allocator, padding, ...
        for row in read_boundaries(path):  # files before schema 6 are the peft recipe's
            by_variant.setdefault(variant_title(row), []).append(row)
        recipe = {t: rows[0].get("recipe") or "peft" for t, rows in by_variant.items()}
        for title in sorted(by_variant, key=lambda t: (RECIPES.index(recipe[t]), t)):
            name = path.parent.name + (f", {title}" if title else "")
            lines += profile_section(name, by_variant[title], model_order)
            sections += 1
        checked = path.with_name("verify.csv")  # `verify` on the card itself, beside the tables
        if checked.exists():
            from bench.verify import read_checked, section

            if rows := read_checked(checked):
                lines += section(path.parent.name, read_results(path), rows)
    if not sections:
        cpu = sorted(Path(results_dir).glob("*/boundaries-cpu.csv"))
        why = (
            f" (only CPU test runs: {', '.join(str(p) for p in cpu)}, which are not reported)" if cpu else ""
        )
        raise BenchUsageError(
            f"no GPU boundary rows under {results_dir} (<profile>/boundaries.csv){why}: nothing to report"
        )
    return "\n".join(lines).rstrip() + "\n"


def write(results_dir: Path, out: Path | None = None) -> list[Path]:
    """The boundary tables (results_dir/boundaries.md, or `out`) and beside them the purchase
    summary (purchase.md), when the results hold seeds the seeds table (seeds.md), and the fit
    predictor's coefficients and accuracy (predictor.json, predictor.md), when steps were
    profiled the per-kernel projection's page (kernel-projection.md), then the page made of
    them (site/index.html). All are rendered before any is written: a damaged results file
    writes nothing."""
    from analysis import kernel_report, predict, summary
    from bench import seeds

    out = Path(out or Path(results_dir) / "boundaries.md")
    texts = {out: render(results_dir), out.with_name("purchase.md"): summary.render(results_dir)}
    seeds_text = seeds.render(results_dir)
    if seeds_text is not None:
        texts[out.with_name("seeds.md")] = seeds_text
    texts.update(predict.texts(results_dir, out.parent))
    kernels_text = kernel_report.render(results_dir)
    if kernels_text is not None:
        texts[out.with_name("kernel-projection.md")] = kernels_text
    for path, text in texts.items():
        try:
            path.write_text(text)
        except OSError as exc:
            raise BenchUsageError(f"cannot write {path}: {exc}") from exc
    from bench import site  # the page shows what was just written

    return [*texts, site.write(out.parent, out.parent / "site")]
