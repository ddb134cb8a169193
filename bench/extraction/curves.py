"""An SFT run's records: the curves CSV (step, losses, format success), its W&B mirror, and the
held-out prompts' outputs before and after."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

CURVE_FIELDS = ["step", "train_loss", "eval_loss", "format_success", "field_accuracy", "n_eval", "elapsed_s"]


def read_curves(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class WandbCurves:
    """Mirrors curve rows to a W&B run. Offline by default (no account: files under the run
    directory, `wandb sync` later). W&B failing never costs a CSV row or stops training."""

    def __init__(self, cfg, log):
        self.run, self.log = None, log
        if not cfg.wandb:
            return
        try:
            import os

            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self.run = wandb.init(
                project="qlora-bench",
                group="sft",
                dir=str(cfg.out),
                config={k: str(v) for k, v in asdict(cfg).items()},
            )
        except Exception as exc:  # any W&B failure is reported, never fatal
            log(f"W&B unavailable, curves go to CSV only: {type(exc).__name__}: {exc}")

    def __call__(self, row: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: float(v) for k, v in row.items() if v not in (None, "")}, step=int(row["step"]))
        except Exception as exc:
            self.log(f"W&B log failed ({type(exc).__name__}); CSV unaffected")

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:
                pass


def write_curves(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in CURVE_FIELDS} for r in rows)
    tmp.replace(path)


def write_before_after(path: Path, rows, before, after) -> None:
    with open(path, "w") as f:
        for row, b, a in zip(rows, before, after, strict=True):
            f.write(
                json.dumps(
                    {"prompt": row["prompt"], "reference": row["completion"], "before": b, "after": a},
                    ensure_ascii=False,
                )
                + "\n"
            )
