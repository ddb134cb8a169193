"""How a memory predictor's left-out predictions are scored (analysis/predict.py, analysis/
arch_predict.py): error of the peak over fits, fit/OOM agreement over all, and away from the cap."""

from __future__ import annotations

import pandas as pd

NEAR_CAP = 0.05  # agreement is scored on points whose prediction is farther than this from the cap


def accuracy(held: pd.DataFrame) -> dict:
    fits_ = held[held.status == "ok"]
    away = held[~held.near_cap]
    return {
        "points": len(held),
        "fits": len(fits_),
        "median_error": float(fits_.error.median()),
        "p90_error": float(fits_.error.quantile(0.9)),
        "agreement_away_from_cap": float(away.agrees.mean()),
        "points_away_from_cap": len(away),
        "agreement_all": float(held.agrees.mean()),
    }
