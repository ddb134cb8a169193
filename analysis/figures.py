"""Seaborn figures from the result CSVs alone (no GPU, no network): `qlora-bench plot`.

- memory.png: peak reserved memory against sequence length (batch 1, fp16, rank 8), a panel per
  profile, with the profile's allocator cap (usable VRAM minus the CUDA context) as a line;
- boundaries.png: the longest sequence that fits (batch 1, fp16), model x (rank, checkpointing),
  a heatmap per profile;
- throughput.png: measured tokens/s against sequence length, from the trials CSVs: H200 speed
  (the emulated card's memory, not its speed), so labelled;
- format_success.png: format success against SFT step, when an SFT curves.csv exists.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.data import PROFILE_ORDER, load, model_order  # noqa: E402

DPI = 110


def _batch1(rows: pd.DataFrame) -> pd.DataFrame:
    """The fitting runs at batch 1, fp16, LoRA r8, labelled by checkpointing."""
    if rows.empty:
        return rows
    rows = rows[(rows.batch_size == 1) & (rows["dtype"] == "fp16") & (rows.lora_rank == 8)].copy()
    rows["checkpointing"] = rows["grad_ckpt"].map({True: "checkpointing", False: "no checkpointing"})
    return rows


def _by_length(rows: pd.DataFrame, y: str, **options):
    """A line per model (and checkpointing) against sequence length, a panel per profile."""
    profiles = [p for p in PROFILE_ORDER if p in set(rows.profile)]
    grid = sns.relplot(
        data=rows,
        x="seq_len",
        y=y,
        hue="model",
        hue_order=[m for m in model_order() if m in set(rows.model)],
        style="checkpointing",
        col="profile",
        col_order=profiles,
        kind="line",
        marker="o",
        height=3.2,
        aspect=1.25,
        **options,
    )
    for ax in grid.axes.flat:
        _tokens_axis(ax)
    return grid, profiles


def memory(data, out: Path) -> Path | None:
    rows = _batch1(data.ok_trials())
    if rows.empty:
        return None
    rows = rows.drop_duplicates(["profile", "model", "seq_len", "checkpointing"])
    grid, profiles = _by_length(
        rows, "peak_reserved_gib", col_wrap=3, markersize=4, facet_kws={"sharex": False, "sharey": False}
    )
    for ax, profile in zip(grid.axes.flat, profiles, strict=False):
        cap = data.caps.get(profile)
        if cap:
            ax.axhline(cap, color="black", linestyle=":", linewidth=1.2)
            low, _ = ax.get_ylim()
            ax.set_ylim(low, cap + 0.12 * (cap - low))
            ax.text(
                0.98,
                cap,
                f"cap {cap:.2f} GiB",
                transform=ax.get_yaxis_transform(),
                ha="right",
                va="bottom",
                fontsize=8,
            )
    grid.set_axis_labels("sequence length (tokens, batch 1)", "peak reserved (GiB)")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(
        "Peak memory of a QLoRA step (fp16, LoRA r8, every point a fitting run; emulated on an H200)",
        y=1.02,
    )
    return _save(grid.figure, out / "memory.png")


def boundaries(data, out: Path) -> Path | None:
    rows = data.boundaries
    if rows.empty:
        return None
    rows = rows[(rows.status == "ok") & (rows.axis == "seq_len") & (rows["dtype"] == "fp16")].copy()
    if rows.empty:
        return None
    rows["setting"] = (
        "r" + rows.lora_rank.astype(str) + ", " + rows.grad_ckpt.map({True: "ckpt", False: "no ckpt"})
    )
    profiles = [p for p in PROFILE_ORDER if p in set(rows.profile)]
    models = [m for m in model_order() if m in set(rows.model)]
    settings = ["r8, ckpt", "r16, ckpt", "r8, no ckpt", "r16, no ckpt"]
    fig, axes = plt.subplots(1, len(profiles), figsize=(3.3 * len(profiles), 0.45 * len(models) + 2.2))
    axes = [axes] if len(profiles) == 1 else list(axes)
    vmax = rows.max_value.max()
    for i, (ax, profile) in enumerate(zip(axes, profiles, strict=True)):
        table = rows[rows.profile == profile].pivot_table(
            index="model", columns="setting", values="max_value", aggfunc="first"
        )
        table = table.reindex(index=models, columns=[s for s in settings if s in table.columns])
        sns.heatmap(
            table / 1024,
            ax=ax,
            annot=True,
            fmt=".1f",
            cmap="viridis",
            vmin=0,
            vmax=vmax / 1024,
            cbar=i == len(profiles) - 1,
            cbar_kws={"label": "longest sequence (k tokens)"},
            annot_kws={"fontsize": 8},
        )
        ax.set_title(profile)
        ax.grid(False)
        ax.set_xlabel("")
        ax.set_ylabel("model" if i == 0 else "")
        if i:
            ax.set_yticklabels([])
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(
        "OOM boundary: longest sequence that trains at batch 1, fp16 (k tokens; blank: not in the grid)"
    )
    return _save(fig, out / "boundaries.png")


def throughput(data, out: Path) -> Path | None:
    rows = _batch1(data.ok_trials(sweeps_only=True))
    if rows.empty:
        return None
    grid, _ = _by_length(rows, "tokens_per_s")
    grid.set_axis_labels("sequence length (tokens, batch 1)", "tokens / s (measured on the H200)")
    grid.set_titles("{col_name} grid")
    grid.figure.suptitle(
        "Measured throughput of the runs that fit: the H200's speed under each card's memory cap, "
        "not the card's speed",
        y=1.03,
    )
    return _save(grid.figure, out / "throughput.png")


def format_success(data, out: Path) -> Path | None:
    curves = data.sft_curves
    if curves.empty or "format_success" not in curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=curves, x="step", y="format_success", hue="run", marker="o", ax=ax)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("format success (share of held-out outputs)")
    ax.set_ylim(0, 1)
    ax.set_title("Exactly valid JSON with the right keys and types, nothing around it")
    return _save(fig, out / "format_success.png")


FIGURES = (memory, boundaries, throughput, format_success)


def make_all(results_dir: Path, out: Path | None = None) -> list[Path]:
    out = Path(out or Path(results_dir) / "figures")
    data = load(Path(results_dir))
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)
    return [path for make in FIGURES if (path := make(data, out)) is not None]


def _tokens_axis(ax) -> None:
    """Log-2 sequence axis labelled in tokens (256, 512, 1k, 2k, ...)."""
    ax.set_xscale("log", base=2)
    low, high = ax.get_xlim()
    ticks = [2**k for k in range(6, 16) if low <= 2**k <= high]
    ax.set_xticks(ticks, [f"{t // 1024}k" if t >= 1024 else str(t) for t in ticks])
    ax.minorticks_off()


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
