"""A fit predictor: peak reserved memory of a QLoRA step from the measured rows, and whether it
fits a card, with its accuracy measured by leaving rows out.

Per model, precision, checkpointing, recipe and attention-kernel class (flash or not: the
math kernel's memory grows with length squared), peak reserved memory is fitted by least
squares to

    peak = fixed + per_rank * r + per_token * batch * seq [+ per_seq2 * batch * seq^2 / 1000]

over every measured fit (sweep trials and boundary probes of every profile of that kernel
class). The per-token term holds the activations and the loss's fp32 tensors over the
vocabulary (3 x vocab x 4 bytes a token for peft's path); `explain` shows it beside that figure.

    python -m analysis.predict results            # the leave-out accuracy table
    python -m analysis.predict results --write    # results/predictor.json (coefficients), .md
    qlora-bench predict --profile t4 --model llama-3.2-3b --seq-len 2048 --rank 16 --dtype fp16
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fit_accuracy import NEAR_CAP, accuracy
from bench.results import read_results, variant

GROUP = ("model", "dtype", "grad_ckpt", "recipe", "flash")


@functools.cache
def _flash(profile: str) -> bool:
    from bench.catalog import load_catalog
    from bench.profiles import load_profile

    return "flash" in load_profile(profile, set(load_catalog())).gpu.sdpa_backends


def load_rows(results_dir: Path) -> pd.DataFrame:
    """Every trial and probe row of results_dir/<profile>/ with a fit or an OOM under a cap."""
    rows = []
    for path in sorted(Path(results_dir).glob("*/*.csv")):
        if path.name not in ("trials.csv", "boundary-trials.csv"):
            continue
        for row in read_results(path):
            if (
                row["status"] in ("ok", "oom")
                and not row.get("inferred_from")
                and row.get("mem_cap_gib")
                and not variant(row, ("recipe",))  # no padding, evaluation or other allocator
            ):
                rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["recipe"] = frame.get("recipe", pd.Series(dtype=str)).replace("", "peft").fillna("peft")
    for column in ("seq_len", "batch_size", "lora_rank"):
        frame[column] = frame[column].astype(int)
    for column in ("peak_reserved_gib", "mem_cap_gib"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["flash"] = frame.profile.map(_flash)
    return frame.reset_index(drop=True)


def _features(frame: pd.DataFrame, flash: bool) -> np.ndarray:
    tokens = frame.batch_size * frame.seq_len / 1000.0
    columns = [np.ones(len(frame)), frame.lora_rank / 16.0, tokens]
    if not flash:
        columns.append(frame.batch_size * (frame.seq_len / 1000.0) ** 2)
    return np.column_stack(columns)


@dataclass(frozen=True)
class Fit:
    key: tuple
    coef: np.ndarray
    rows: int
    ranks: tuple[int, ...] = ()

    def peak(self, rank: int, batch: int, seq: int) -> float:
        one = pd.DataFrame({"lora_rank": [rank], "batch_size": [batch], "seq_len": [seq]})
        return float((_features(one, self.key[-1]) @ self.coef)[0])


def fit_group(ok: pd.DataFrame, key: tuple) -> Fit | None:
    """Least squares over a group's fits; None with fewer rows than coefficients + 1."""
    x = _features(ok, key[-1])
    if len(ok) < x.shape[1] + 1:
        return None
    if ok.lora_rank.nunique() == 1:  # one rank measured: its effect is unknown, not guessed
        coef, *_ = np.linalg.lstsq(np.delete(x, 1, axis=1), ok.peak_reserved_gib.to_numpy(), rcond=None)
        coef = np.insert(coef, 1, 0.0)
    else:
        coef, *_ = np.linalg.lstsq(x, ok.peak_reserved_gib.to_numpy(), rcond=None)
    return Fit(key, coef, len(ok), tuple(sorted(int(r) for r in ok.lora_rank.unique())))


def fits(frame: pd.DataFrame) -> dict[tuple, Fit]:
    ok = frame[frame.status == "ok"]
    out = {}
    for key, group in ok.groupby(list(GROUP)):
        fitted = fit_group(group, key)
        if fitted is not None:
            out[key] = fitted
    return out


def leave_out(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row predicted by its group's fit without that row's configuration (every profile's
    row of the same point left out together): error of the peak for fits; fit/OOM against the
    row's cap for all."""
    out = []
    point = ["model", "dtype", "grad_ckpt", "recipe", "flash", "lora_rank", "batch_size", "seq_len"]
    for key, group in frame.groupby(list(GROUP)):
        ok = group[group.status == "ok"]
        for values, rows in group.groupby(point[5:]):
            rest = ok[
                ~((ok.lora_rank == values[0]) & (ok.batch_size == values[1]) & (ok.seq_len == values[2]))
            ]
            fitted = fit_group(rest, key)
            if fitted is None:
                continue
            predicted = fitted.peak(*values)
            for _, row in rows.iterrows():
                cap = float(row.mem_cap_gib)
                out.append(
                    {
                        **dict(zip(GROUP, key, strict=True)),
                        "profile": row.profile,
                        "lora_rank": values[0],
                        "batch_size": values[1],
                        "seq_len": values[2],
                        "status": row.status,
                        "measured": row.peak_reserved_gib if row.status == "ok" else None,
                        "predicted": predicted,
                        "cap": cap,
                        "agrees": (predicted <= cap) == (row.status == "ok"),
                        "near_cap": abs(predicted - cap) <= NEAR_CAP * cap,
                    }
                )
    result = pd.DataFrame(out)
    if not result.empty:
        result["error"] = (result.predicted - result.measured).abs() / result.measured
    return result


def render(results_dir: Path) -> str:
    from analysis import arch_predict

    frame = load_rows(results_dir)
    return _render(frame, arch_predict.section(frame)[0] if not frame.empty else [])


def _render(frame: pd.DataFrame, arch_lines: list[str]) -> str:
    """predictor.md: this fit's leave-out table, then the cross-architecture fit's lines."""
    held = leave_out(frame)
    if held.empty:
        return "No measured rows to fit.\n"
    total = accuracy(held)
    lines = [
        "# Fit predictor: accuracy with measured points left out",
        "",
        "Made by `python -m analysis.predict results --write` (and `qlora-bench report`). Each "
        "measured configuration (all profiles' rows of it together) is predicted by its group's "
        "fit without it (analysis/predict.py: "
        "per model, precision, checkpointing, recipe and attention-kernel class). Error: "
        "|predicted - measured| / measured peak reserved memory, over fits. Agreement: predicted "
        "fit/OOM (predicted peak against the row's cap) equals what ran, over fits and OOMs, "
        f"and away from the cap (prediction more than {NEAR_CAP:.0%} from it). Targets "
        "(issue 23): median error at most 5 %, agreement away from the cap at least 97 %.",
        "",
        "| group | points | fits | median error | p90 error | agreement away from cap (points) "
        "| agreement, all |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def line(name, acc):
        errors = f"{acc['median_error']:.1%} | {acc['p90_error']:.1%}"
        away = f"{acc['agreement_away_from_cap']:.1%} ({acc['points_away_from_cap']})"
        return (
            f"| {name} | {acc['points']} | {acc['fits']} | {errors} | {away} | {acc['agreement_all']:.1%} |"
        )

    lines.append(line("**all**", total))
    for model, group in held.groupby("model"):
        lines.append(line(model, accuracy(group)))
    return "\n".join(lines + arch_lines) + "\n"


def export(results_dir: Path) -> dict:
    """The fitted coefficients, as data (results/predictor.json): what `qlora-bench predict`
    and the static page compute with, without pandas or the CSVs."""
    from analysis import arch_predict

    frame = load_rows(results_dir)
    return _export(frame, arch_predict.section(frame)[1] if not frame.empty else None)


def _export(frame: pd.DataFrame, arch_held: dict | None) -> dict:
    """export's data, given the cross-architecture fit's left-out accuracy."""
    from analysis import arch_predict
    from bench.architecture import FEATURES

    if frame.empty:
        return {"groups": []}
    groups = [
        {
            **dict(zip(GROUP, key, strict=True)),
            "coef": [round(float(c), 6) for c in fit.coef],
            "rows": fit.rows,
            "ranks": list(fit.ranks),
        }
        for key, fit in sorted(fits(frame).items())
    ]
    return {
        "model": "peak_reserved_gib = coef . [1, rank/16, batch*seq/1000, batch*(seq/1000)^2 (not flash)]",
        "groups": groups,
        "architecture": {
            "model": "peak_reserved_gib = coef . bench.architecture.features(config, ...)",
            "features": list(FEATURES),
            "groups": arch_predict.groups(frame),
            "left_out": {k: round(v, 6) if isinstance(v, float) else v for k, v in (arch_held or {}).items()},
        },
    }


def texts(results_dir: Path, out_dir: Path | None = None) -> dict[Path, str]:
    """{path: text} of predictor.json and predictor.md (empty when nothing is measured)."""
    import json

    from analysis import arch_predict

    out_dir = Path(out_dir or results_dir)
    frame = load_rows(results_dir)  # read once, and the cross-architecture fit left out once
    arch_lines, arch_held = arch_predict.section(frame) if not frame.empty else ([], None)
    data = _export(frame, arch_held)
    if not data["groups"]:
        return {}
    return {
        out_dir / "predictor.json": json.dumps(data, indent=1, sort_keys=True) + "\n",
        out_dir / "predictor.md": _render(frame, arch_lines),
    }


def write(results_dir: Path) -> list[Path]:
    written = texts(results_dir)
    for path, text in written.items():
        path.write_text(text)
    return list(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--write", action="store_true", help="write results/predictor.json and .md")
    args = parser.parse_args()
    if args.write:
        for path in write(args.results):
            print(path)
    else:
        print(render(args.results), end="")


if __name__ == "__main__":
    main()
