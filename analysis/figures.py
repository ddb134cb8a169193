"""Seaborn figures from the result CSVs alone (no GPU, no network): `qlora-bench plot`.

- memory.png: peak reserved memory against sequence length (batch 1, fp16, rank 8), a panel per
  profile, with the profile's allocator cap (usable VRAM minus the CUDA context) as a line;
- boundaries.png: the longest sequence that fits at batch 1 on peft's path, model x (precision,
  rank, checkpointing), a heatmap per profile; `none` (not even the shortest) apart from blank
  (not in the grid);
- boundaries-recipes.png: the same per training stack (fp16, checkpointing, r16);
No throughput figure: the steps ran at the H200's speed, which is no small card's (the
purchase summary's job times are projections, so labelled).
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


def _heatmaps(rows: pd.DataFrame, column: str, columns: list[str], title: str, path: Path) -> Path:
    """Model x `column` heatmaps of the longest sequence at batch 1, a panel per profile: a cell
    that does not fit even the shortest length is `none` on red, one that errors `fails` on grey,
    one not searched blank."""
    from matplotlib.colors import ListedColormap

    profiles = [p for p in PROFILE_ORDER if p in set(rows.profile)]
    models = [m for m in model_order() if m in set(rows.model)]
    shown = [c for c in columns if c in set(rows[column])]
    wide = min(len(profiles), max(1, 24 // len(shown)))  # panels a row
    high = -(-len(profiles) // wide)
    fig, axes = plt.subplots(
        high, wide, figsize=(0.7 * len(shown) * wide + 2, (0.42 * len(models) + 2.2) * high), squeeze=False
    )
    axes = list(axes.flat)
    for ax in axes[len(profiles) :]:
        ax.set_visible(False)
    vmax = rows.value.max() / 1024
    for i, (ax, profile) in enumerate(zip(axes, profiles, strict=False)):
        table = rows[rows.profile == profile].pivot_table(
            index="model", columns=column, values="value", aggfunc="first"
        )
        table = table.reindex(index=models, columns=shown)
        none, fails = table == 0, table < 0
        sns.heatmap(
            table / 1024, ax=ax, mask=table.isna() | none | fails, annot=True, fmt=".1f", cmap="viridis",
            vmin=0, vmax=vmax, cbar=False, annot_kws={"fontsize": 8},
        )  # fmt: skip
        for where, colour, word in ((none, "#e9a3a3", "none"), (fails, "#c8c8c8", "fails")):
            if where.to_numpy().any():
                sns.heatmap(
                    where.astype(float), ax=ax, mask=~where, cmap=ListedColormap([colour]), cbar=False,
                    annot=where.replace({True: word, False: ""}), fmt="", annot_kws={"fontsize": 7},
                )  # fmt: skip
        ax.set_title(profile)
        ax.grid(False)
        ax.set_xlabel("")
        ax.set_ylabel("model" if i % wide == 0 else "")
        if i % wide:
            ax.set_yticklabels([])
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.94, 0.97))
    scale = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, vmax))
    fig.colorbar(scale, cax=fig.add_axes((0.955, 0.25, 0.012, 0.5)), label="longest sequence (k tokens)")
    return _save(fig, path)


def _boundary_rows(results_dir: Path) -> pd.DataFrame:
    """Every recipe's batch-1 sequence boundaries with a value: the longest fit, 0 for none,
    -1 where the stack errors."""
    from bench.results import read_results, variant

    rows = []
    for path in sorted(Path(results_dir).glob("*/boundaries.csv")):
        for row in read_results(path):
            if variant(row, ("recipe",)):  # another allocator, padding, ...: not these figures
                continue
            if row["axis"] == "seq_len" and row["status"] in ("ok", "error"):
                value = int(row["max_value"]) if row["status"] == "ok" else -1
                rows.append({**row, "recipe": row.get("recipe") or "peft", "value": value})
    return pd.DataFrame(rows)


def boundaries(data, out: Path) -> Path | None:
    rows = _boundary_rows(data.root)
    if rows.empty or (rows := rows[rows.recipe == "peft"]).empty:
        return None
    rows = rows.assign(
        setting=rows["dtype"]
        + ", r"
        + rows.lora_rank
        + ", "
        + rows.grad_ckpt.map({"true": "ckpt", "false": "no ckpt"})
    )
    settings = [f"{d}, r{r}, {c}" for d in ("fp16", "bf16") for c in ("ckpt", "no ckpt") for r in (8, 16)]
    return _heatmaps(
        rows, "setting", settings,
        "OOM boundary, peft's path: longest sequence that trains at batch 1 (k tokens; none: not even "
        "64 tokens; blank: not in the grid or the card has no bf16)",
        out / "boundaries.png",
    )  # fmt: skip


def boundaries_by_recipe(data, out: Path) -> Path | None:
    """The stacks side by side where more than one was searched: fp16, checkpointing, r16."""
    from bench.spec import RECIPES

    rows = _boundary_rows(data.root)
    if rows.empty:
        return None
    rows = rows[(rows["dtype"] == "fp16") & (rows.grad_ckpt == "true") & (rows.lora_rank == "16")]
    several = rows.groupby("profile").recipe.nunique()
    rows = rows[rows.profile.isin(several[several > 1].index)]  # cards with stacks to compare
    if rows.empty:
        return None
    return _heatmaps(
        rows, "recipe", list(RECIPES),
        "Longest sequence at batch 1 by training stack, fp16, checkpointing, LoRA r16 (k tokens; none: "
        "not even 64 tokens; fails: the stack errors; blank: not searched)",
        out / "boundaries-recipes.png",
    )  # fmt: skip


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


FIGURES = (memory, boundaries, boundaries_by_recipe, format_success)


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
