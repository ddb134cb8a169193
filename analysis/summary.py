"""results/purchase.md: per profile, the largest model and context it can fine-tune with QLoRA at
batch 1 (measured boundaries), and the projected time of a reference job. Written by
`qlora-bench report` from the CSVs alone."""

from __future__ import annotations

from pathlib import Path

from analysis.data import load, model_order, profiles
from analysis.estimate import safe_tokens
from analysis.projection import calibrated

EXAMPLES, TOKENS, EPOCHS = 5000, 512, 2


def render(results_dir: Path) -> str:
    data = load(Path(results_dir))
    bounds = data.boundaries
    projection = calibrated(data)
    lines = [
        "# Which GPU for QLoRA? A summary for buying one",
        "",
        "Made by `qlora-bench report` from `results/<profile>/boundaries.csv` and the trials CSVs. "
        "Largest model: the largest catalogue model whose longest sequence at batch 1 (any "
        "precision the card has, with or without gradient checkpointing, smallest LoRA rank) "
        f"reaches {TOKENS} tokens; context: that longest sequence (measured, emulated on an H200; "
        "the safe value where a scan below it found a length that ran out of memory, then the "
        "longest that fit with §). "
        f"Reference job: {EXAMPLES} examples x {TOKENS} tokens x {EPOCHS} epochs, as `qlora-bench "
        "estimate` answers it: at the fastest measured setting that trains it on the card (precision, "
        "checkpointing, the largest measured batch that holds the tokens), hours with their band "
        "and that setting. Its time is **projected** (analysis/projection.py: launches + matmuls at "
        "a fitted share of the card's datasheet TFLOPS + NF4 dequantisation at an assumed share of "
        "its bandwidth), not measured.",
        "",
    ]
    if projection is None or bounds.empty:
        return "\n".join(lines + ["No measured results yet.", ""])
    cal = projection.calibration()
    lines += [
        f"Projection against the H200's own {cal['rows']} measured steps: median error "
        f"{cal['median_error_left_out']:.0%} (90th percentile {cal['p90_error_left_out']:.0%}) with "
        f"each model left out of the fit; fitted compute efficiency {cal['eta_compute']:.2f} of "
        f"datasheet, launch cost {cal['k_s_per_layer_pass'] * 1000:.1f} ms per layer and pass, "
        f"bandwidth share assumed {cal['eta_memory_assumed']:.1f}. No card was measured natively, "
        "so the projection's error on a small card is not known yet.",
        "",
        "| profile | usable VRAM (GiB) | largest model at batch 1 | its longest sequence (setting) "
        "| projected reference job (h) | Qwen2.5-1.5B: longest sequence / projected job (h) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    partial = []
    for profile in profiles():
        rows = bounds[(bounds.profile == profile.name) & (bounds.status == "ok") & (bounds.axis == "seq_len")]
        if rows.empty:
            continue
        if not set(profile.grid.models) <= set(rows.model):  # its largest model is not known
            searched = f"{rows.model.nunique()} of its {len(profile.grid.models)} grid models"
            partial.append(f"{profile.name} ({searched})")
            continue
        best = _best_setting(rows)
        fitting = best[best.safe >= TOKENS]
        big = max(fitting.model, key=_size) if not fitting.empty else None
        cells = [profile.name, f"{profile.gpu.usable_vram_gib:g}"]
        if big is None:
            cells += ["none", "-", "-"]
        else:
            r = fitting[fitting.model == big].iloc[0]
            cells += [big, f"{_tokens(r)} ({_setting(r)})", _job(projection, profile, bounds, big, cal)]
        small = best[best.model == "qwen2.5-1.5b"]
        if small.empty:
            cells.append("not in grid")
        else:
            r = small.iloc[0]
            job = (
                _job(projection, profile, bounds, "qwen2.5-1.5b", cal) if r.safe >= TOKENS else "does not fit"
            )
            cells.append(f"{_tokens(r)} ({_setting(r)}) / {job}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Profiles without measured boundaries are left out: `qlora-bench boundary --profile P` "
        "measures them"
        + (f"; so are those whose grid was searched only in part: {', '.join(partial)}." if partial else "."),
        "",
    ]
    return "\n".join(lines + job_times(projection, bounds, cal) + by_stack(Path(results_dir)))


def job_times(projection, bounds, cal: dict) -> list[str]:
    """The reference job on every measured card and model, as `qlora-bench estimate` answers."""
    lines = [
        "## How long the reference job takes",
        "",
        f"{EXAMPLES} examples x {TOKENS} tokens x {EPOCHS} epochs on each card and model with "
        "measured boundaries, at the fastest measured setting that trains it: **projected** hours "
        f"(band: the projection's 90th-percentile error against the H200's own steps, "
        f"{cal['p90_error_left_out']:.0%}; its error on a real small card is not measured) and that "
        "setting. `qlora-bench estimate --profile P --model M --examples N --tokens T --epochs E` "
        "answers for any job.",
        "",
        "| profile | " + " | ".join(m for m in model_order() if m in set(bounds.model)) + " |",
        "| --- |" + " --- |" * len(set(bounds.model)),
    ]
    for profile in profiles():
        if bounds[bounds.profile == profile.name].empty:
            continue
        cells = [
            _job(projection, profile, bounds, m, cal) if not bounds[(bounds.profile == profile.name)
                                                                   & (bounds.model == m)].empty else ""
            for m in model_order() if m in set(bounds.model)
        ]  # fmt: skip
        lines.append(f"| {profile.name} | " + " | ".join(cells) + " |")
    return lines + [""]


def stacks(results_dir: Path) -> dict[tuple, dict[str, str]]:
    """(profile, model, dtype, 'true', rank) -> {recipe: the longest sequence at batch 1 as the
    tables write it, or 'fails'}: with checkpointing, at settings that more than one recipe was
    searched at, per card and model at the rank most recipes were searched at."""
    from bench.results import read_boundaries, value_text, variant

    cells: dict[tuple, dict[str, str]] = {}
    for path in sorted(results_dir.glob("*/boundaries.csv")):
        for row in read_boundaries(path):
            if row["axis"] != "seq_len" or row["status"] not in ("ok", "error") or variant(row, ("recipe",)):
                continue
            setting = (path.parent.name, row["model"], row["dtype"], row["grad_ckpt"], int(row["lora_rank"]))
            value = value_text(row) if row["status"] == "ok" else "fails"
            cells.setdefault(setting, {})[row.get("recipe") or "peft"] = value
    shared = {k: v for k, v in cells.items() if len(v) > 1 and k[3] == "true"}  # checkpointing on
    best = {}  # per card and model: the rank most recipes were searched at (then the smallest)
    for (profile, model, _, _, rank), by in shared.items():
        best[profile, model] = min((-len(by), rank), best.get((profile, model), (-len(by), rank)))
    return {k: v for k, v in shared.items() if k[4] == best[k[0], k[1]][1]}


# why the trl column says `fails` in fp16, and that other TRL versions differ (compare says it too)
TRL_NOTE = (
    "`trl` fails in fp16 because TRL since 0.26 casts a 4-bit model's adapters to bf16; an older "
    "TRL trains in fp16, and before 1.7 it paid for the logits as peft does (the versions "
    "measured: results/boundaries.md; docs/recipes.md, Which TRL)."
)


def by_stack(results_dir: Path) -> list[str]:
    """How far each training stack gets on a card: the longest sequence at batch 1 per recipe, at
    settings that more than one recipe was searched at (docs/recipes.md says what each runs)."""
    from bench.spec import RECIPES

    shared = stacks(results_dir)
    if not shared:
        return []
    recipes = [r for r in RECIPES if any(r in v for v in shared.values())]
    lines = [
        "## How far each training stack gets",
        "",
        "The longest sequence that trains at batch 1 (tokens; 0: not even the shortest), per "
        "recipe, with gradient checkpointing, where more than one recipe was searched at the same "
        "setting (per card and model, the LoRA rank most recipes were searched at; measured, "
        "emulated on an H200; `fails`: the stack errors; `≥`: the search's limit still fit; "
        "blank: not searched; `1792 (2048§)`: the safe value, every probed length at or below it "
        "fit, then the longest that fit; `320 [192-448]`: the band, the longest with the cap `--band` "
        "GiB lower and higher, 0.3 in the published runs (`[?]`: not searched yet); `¶N`: a later "
        "probe under the same cap ran out of memory at N, results/boundaries.md). What each recipe "
        "runs: docs/recipes.md. " + TRL_NOTE,
        "",
        "| profile | model | setting | " + " | ".join(recipes) + " |",
        "| --- | --- | --- |" + " --- |" * len(recipes),
    ]
    for (profile, model, dtype, ckpt, rank), by in sorted(shared.items()):
        setting = f"{dtype}, {'ckpt' if ckpt == 'true' else 'no ckpt'}, r{rank}"
        lines.append(
            f"| {profile} | {model} | {setting} | " + " | ".join(by.get(r, "") for r in recipes) + " |"
        )
    return lines + [""]


def _size(model: str) -> float:
    from bench.catalog import load_catalog

    arch = load_catalog()[model]
    return arch.linear_params() + arch.head_params()


def _best_setting(rows):
    """Per model: the smallest rank, then the setting with the longest safe sequence
    (checkpointing first on ties, then fp16); `safe` holds that value (safe_tokens)."""
    rows = rows.assign(safe=[safe_tokens(r) for _, r in rows.iterrows()])
    rows = rows[rows.lora_rank == rows.groupby("model").lora_rank.transform("min")]
    rows = rows.sort_values(["model", "safe", "grad_ckpt", "dtype"], ascending=[True, False, False, False])
    return rows.drop_duplicates("model")


def _tokens(row) -> str:
    """The safe value, and the largest that fit with '§' where a value below it ran out."""
    return str(row.safe) if row.safe == int(row.max_value) else f"{row.safe} ({int(row.max_value)}§)"


def _setting(row) -> str:
    return f"{row['dtype']}, {'ckpt' if row.grad_ckpt else 'no ckpt'}, r{int(row.lora_rank)}"


def _job(projection, profile, bounds, model: str, cal: dict) -> str:
    """The reference job's projected hours at the fastest setting (analysis.estimate)."""
    from analysis.estimate import job_options

    rows = bounds[(bounds.profile == profile.name) & (bounds.model == model)]
    options = job_options(projection, profile, rows, EXAMPLES, TOKENS, EPOCHS, cal["p90_error_left_out"])
    if not options:
        return "does not fit"
    o = options[0]
    setting = f"{o['dtype']}, {'ckpt' if o['grad_ckpt'] else 'no ckpt'}, batch {o['batch']}"
    return f"{o['hours']:.1f} ({o['low']:.1f}-{o['high']:.1f}; {setting})"
