"""results/kernel-projection.md: the per-kernel projection (analysis/kernel_projection.py) from
the committed profiled steps, checked against the H200's own measured steps, and set beside the
fitted projection (analysis/projection.py) that `estimate`, `compare` and purchase.md use today.

    python -m analysis.kernel_report results [--write]     (`qlora-bench report` writes it too)
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import median

from analysis.kernel_projection import KernelProjection, _rows, host_validation, native_validation

LENGTHS = (512, 2048)


def _sources(kernels_dir: Path) -> list[str]:
    lines = []
    for path in sorted(kernels_dir.glob("*.csv")):
        if path.stem == "rates":
            continue
        rows = [r for r in _rows(path) if r["class"] == "step"]
        where = sorted({f"{r['gpu_name']}, driver {r['driver']}, torch {r['torch']}" for r in rows})
        commits = sorted({r["git_commit"][:7] for r in rows})
        kernels = sorted({r["sdpa_backend_used"] for r in rows})
        lines.append(
            f"- `kernels/{path.name}`: {len(rows)} profiled steps "
            f"({', '.join(sorted({r['dtype'] for r in rows}))}; "
            f"attention: {', '.join(kernels)}; emulated {rows[0]['emulated'].lower() if rows else '-'}) "
            f"on {'; '.join(where)}; commits {', '.join(commits)}."
        )
    return lines


def _validation(results_dir: Path, kernels_dir: Path) -> list[str]:
    checked = host_validation(results_dir, kernels_dir)
    if not checked:
        return ["No measured step of a profiled setting to check against."]
    lines = [
        "| projected step | points | median error | worst error | median measured / projected (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for bound in ("gpu", "launch"):
        group = [c for c in checked if c["bound"] == bound]
        if not group:
            continue
        errors = [abs(c["error"]) for c in group]
        worst = max(group, key=lambda c: abs(c["error"]))
        lines.append(
            f"| {'GPU-bound' if bound == 'gpu' else 'launch-bound'} | {len(group)} | {median(errors):.0%} "
            f"| {worst['error']:+.0%} ({worst['model']}, {worst['seq_len']} x {worst['batch_size']}) "
            f"| {median(c['measured_ms'] for c in group):.0f} / "
            f"{median(c['projected_ms'] for c in group):.0f} |"
        )
    return lines


def _native(results_dir: Path, kernels_dir: Path) -> list[str]:
    """The projection against `verify` rows run on a real card (none yet: how to make them)."""
    checked = native_validation(results_dir, kernels_dir)
    if not checked:
        return [
            "None yet: no step measured on a real card of these profiles. `qlora-bench verify "
            "--profile P`, run on the card P describes, writes native rows (`results/P/verify.csv`, "
            "emulated false) with their step times, and this table then checks the projection "
            "against each."
        ]
    lines = [
        "| card (GPU, driver) | model | setting | measured / projected (ms) | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in checked:
        ckpt = "ckpt" if c["grad_ckpt"] else "no ckpt"
        setting = f"{c['seq_len']} x {c['batch_size']}, {c['dtype']}, {ckpt}, {c['recipe']}"
        lines.append(
            f"| {c['profile']} ({c['gpu']}, {c['driver']}) | {c['model']} | {setting} | "
            f"{c['measured_ms']:.0f} / {c['projected_ms']:.0f} | {c['error']:+.0%} |"
        )
    errors = [abs(c["error"]) for c in checked]
    summary = f"Median absolute error {median(errors):.0%}, worst {max(errors):.0%}, of {len(checked)} steps."
    return [*lines, "", summary]


def _cards(projection: KernelProjection, fitted, ckpt: bool = True, lengths: tuple = LENGTHS) -> list[str]:
    """Per card, projected tokens/s at batch 1 and `lengths`: the per-kernel projection, and in
    brackets `fitted`'s (analysis.projection; None: left out)."""
    from analysis.data import profiles
    from analysis.summary import _size

    profiled = {p.key[0] for points in projection.files.values() for p in points}
    models = sorted(profiled, key=_size)  # smallest first
    lines = [
        "| card | kernels from | rates (TFLOPS / GB/s, source) | "
        + " | ".join(f"{m} {n}" for m in models for n in lengths)
        + " |",
        "| --- | --- | --- |" + " --- |" * (len(models) * len(lengths)),
    ]
    for profile in profiles():
        if not profile.gpu.fp16_tensor_tflops:
            continue
        dtype = "bf16" if profile.gpu.native_bf16 else "fp16"
        rates = projection.rates(profile, dtype)
        cells = [
            f"{profile.name} ({dtype})",
            projection.kernel_set(profile) or "-",
            f"{rates.gemm_tflops:.0f} / {rates.copy_gbps:.0f} ({rates.source})",
        ]
        for model in models:
            for seq in lengths:
                step = projection.step_ms(profile, model, seq, 1, ckpt, dtype)
                old = fitted.step_s(profile, model, seq, 1, ckpt, dtype) if fitted else None
                if step is None:
                    cells.append("-")
                    continue
                cells.append(f"{seq / step * 1000:,.0f}" + (f" ({seq / old:,.0f})" if old else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(results_dir: Path) -> str | None:
    """The page's markdown; None when no steps were profiled (no results_dir/kernels/*.csv)."""
    kernels_dir = Path(results_dir) / "kernels"
    try:
        projection = KernelProjection(kernels_dir)
    except FileNotFoundError:
        return None
    from analysis.data import load
    from analysis.projection import calibrated

    fitted = calibrated(load(Path(results_dir)))  # the one `estimate` uses, beside it
    return "\n".join(
        [
            "# The per-kernel speed projection",
            "",
            "Made by `python -m analysis.kernel_report results --write` (and `qlora-bench report`) "
            "from the profiled steps under `kernels/` (`qlora-bench kernels`), the H200's own "
            "sustained rates (`kernels/rates.csv`, `qlora-bench kernels --rates`) and the cited "
            "rates of the other cards (`analysis/data/card_rates.csv`). How it projects: "
            "analysis/kernel_projection.py. **Projected**, not measured on any of these cards.",
            "",
            *_sources(kernels_dir),
            "",
            "CPU launch cost per kernel, where the profiled GPU mostly waited: "
            f"{projection.launch_ms * 1000:.0f} "
            "us (the H200 host's CPU; a step is the longer of its launches and its GPU work).",
            "",
            "## Against the H200's own measured steps",
            "",
            "Every measured ok step (sweeps, peft) of a profiled model and setting, its profiled "
            "lengths left out, projected for the H200 from the kernels that trial ran with. "
            "Launch-bound steps depend on the host's CPU and the code: the sweeps' steps were "
            "measured on 2026-11-21 (commit e8db8b9), where launch-bound steps took about half as "
            "long as the same steps do now (Qwen2.5-7B, 512 tokens: 0.28 s then, 0.51 s profiled; "
            "Qwen2.5-0.5B with checkpointing: 0.23 s at 512 tokens then, 0.42-0.49 s at 1024 in "
            "rtx3050-laptop's sweep rows of 2026-12-02); another lent host or the code since, not "
            "separated. A small card's steps are GPU-bound (table below).",
            "",
            *_validation(Path(results_dir), kernels_dir),
            "",
            "## Against real cards",
            "",
            *_native(Path(results_dir), kernels_dir),
            "",
            "## Projected tokens/s, batch 1, r16, checkpointing",
            "",
            "Per card at its own precision: the per-kernel projection, and in brackets the fitted "
            "one that `estimate`, `compare` and purchase.md still use (the per-kernel one is not "
            "checked against any real card yet). '-': not profiled.",
            "",
            *_cards(projection, fitted),
            "",
            "## Projected tokens/s, batch 1, r16, no checkpointing, 512 tokens",
            "",
            "The settings `estimate` often finds fastest. Profiled at 512 tokens for every model "
            "(at 1024 too for the 0.5B-1.5B ones with the T4's kernels; at 2048 none of them fits "
            "the T4's cap without checkpointing), so only 512 is shown. '-': not profiled.",
            "",
            *_cards(projection, fitted, ckpt=False, lengths=(512,)),
            "",
        ]
    )


if __name__ == "__main__":
    results = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "results")
    text = render(results)
    if text is None:
        sys.exit(f"no profiled steps under {results / 'kernels'}")
    if "--write" in sys.argv:
        (results / "kernel-projection.md").write_text(text)
    else:
        print(text)
