"""Projected step time of a QLoRA step on a card we did not run on. Always labelled "projected".

A small QLoRA step on the H200 is launch-bound, so an emulated card's speed cannot be read off
its rows. The model, per step (t = batch x seq tokens, N = linear-layer parameters of the base,
H = the LM head's, L = layers, c = 1 with gradient checkpointing else 0):

  time = k * L * (2 + c)                              launches (CPU-bound, the same on any card)
       + (4 + 2c) * (N + H) * t / (eta_c * TFLOPS)     matmuls: forward, input gradients, recompute
       + 4.5 * N * (2 + c) / (eta_m * bandwidth)        NF4 dequantisation: 0.5 B read, 2 B
                                                        written and 2 B read per weight, per pass

k and 1/eta_c are fitted (least squares on relative error, non-negative) on the step times
measured on the H200 (its datasheet TFLOPS and bandwidth, profiles/h200.yaml) and applied to the
target card's datasheet figures. eta_m cannot be fitted there (on the H200 the dequantisation is
a few per cent of a launch-bound step, below the noise), so it is an assumption: ETA_MEMORY.
Attention and the optimizer are left out (LoRA parameters are few;
attention is a minor share below a few thousand tokens). How far the model is from measurement
is reported with it (`calibration`), leaving each model out of the fit in turn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.catalog import load_catalog

ETA_MEMORY = 0.7  # assumed share of datasheet bandwidth a dequantisation kernel reaches


def features(model: str, tokens: float, ckpt: bool, tflops: float, bandwidth_gbps: float) -> np.ndarray:
    arch = load_catalog()[model]
    linear, head, layers = arch.linear_params(), arch.head_params(), arch.config["num_hidden_layers"]
    c = 1.0 if ckpt else 0.0
    return np.array(
        [
            layers * (2 + c),
            (4 + 2 * c) * (linear + head) * tokens / (tflops * 1e12),
            4.5 * linear * (2 + c) / (bandwidth_gbps * 1e9),
        ]
    )


def _design(rows: pd.DataFrame, tflops: float, bandwidth: float) -> np.ndarray:
    return np.stack(
        [
            features(r.model, r.batch_size * r.seq_len, bool(r.grad_ckpt), tflops, bandwidth)
            for r in rows.itertuples()
        ]
    )


def _nnls(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Least squares of x @ coef = y relative to `scale` (the measured time), coefficients >= 0."""
    xw, yw = x / scale[:, None], y / scale
    active = list(range(x.shape[1]))
    while True:
        coef = np.zeros(x.shape[1])
        coef[active] = np.linalg.lstsq(xw[:, active], yw, rcond=None)[0]
        if (coef >= 0).all():
            return coef
        active = [i for i in active if coef[i] > 0]


def calibrated(results) -> Projection | None:
    """The projection fitted on the step times the sweeps measured on the H200; None without."""
    from bench.profiles import load_profile

    sweeps = results.ok_trials(sweeps_only=True)
    return Projection(sweeps, load_profile("h200")) if not sweeps.empty else None


class Projection:
    def __init__(self, measured: pd.DataFrame, host):
        """measured: ok rows with step_time_p50_s measured on `host` (a profile: its datasheet)."""
        self.host = host
        rows = measured[(measured.status == "ok") & measured.step_time_p50_s.notna()]
        self.rows = rows[rows.model.isin(load_catalog())]
        self.x = _design(self.rows, host.gpu.fp16_tensor_tflops, host.gpu.memory_bandwidth_gbps)
        self.y = self.rows.step_time_p50_s.to_numpy(float)
        self.coef = self._fit(self.x, self.y)

    @staticmethod
    def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        fixed = x[:, 2] / ETA_MEMORY
        return np.append(_nnls(x[:, :2], y - fixed, y), 1 / ETA_MEMORY)

    def step_s(self, profile, model: str, seq: int, batch: int, ckpt: bool, dtype: str = "fp16") -> float:
        tflops = profile.gpu.bf16_tensor_tflops if dtype == "bf16" else profile.gpu.fp16_tensor_tflops
        return float(
            features(model, batch * seq, ckpt, tflops, profile.gpu.memory_bandwidth_gbps) @ self.coef
        )

    def calibration(self) -> dict:
        """Error of the projection against the H200's own measurements: in the fit, and with each
        model left out of the fit and projected."""
        fitted = self.x @ self.coef
        held = np.empty_like(self.y)
        for model in self.rows.model.unique():
            out = (self.rows.model == model).to_numpy()
            if out.all():
                held[out] = fitted[out]
                continue
            held[out] = self.x[out] @ self._fit(self.x[~out], self.y[~out])
        rel = lambda p: np.abs(p - self.y) / self.y  # noqa: E731
        return {
            "rows": len(self.y),
            "median_error_fit": float(np.median(rel(fitted))),
            "p90_error_fit": float(np.quantile(rel(fitted), 0.9)),
            "median_error_left_out": float(np.median(rel(held))),
            "p90_error_left_out": float(np.quantile(rel(held), 0.9)),
            "k_s_per_layer_pass": float(self.coef[0]),
            "eta_compute": float(1 / self.coef[1]) if self.coef[1] else float("inf"),
            "eta_memory_assumed": ETA_MEMORY,
        }
