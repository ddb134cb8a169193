"""A QLoRA step's time on a card we did not run on, kernel class by kernel class. Projected,
and labelled so.

Inputs, all committed and nothing else (so the figure does not move when unrelated results do):
- results/kernels/<profile>.csv: steps profiled on the H200 (`qlora-bench kernels`) with the
  card's own attention kernels and dtypes (or, without such a file, h200.csv's): per kernel
  class its GPU time, its kernels, and its work (FLOPs of matrix products; bytes of the rest);
  per step the wall time and the GPU's busy time.
- analysis/data/card_rates.csv: each card's *sustained* matrix-product rate and copy bandwidth,
  measured by others (source per row), and results/kernels/rates.csv: the H200's, measured here.
  A card without a cited figure gets its datasheet figure times the median measured/datasheet
  ratio of the cited cards (kind `rule`).

Per class, on the target card:
- matrix products and attention (compute-bound): the H200's time scaled by the ratio of the two
  cards' sustained matrix-product rates;
- the rest (dequantisation, loss, elementwise, optimizer: bandwidth-bound): the bytes over the
  card's sustained bandwidth at the efficiency the H200 reached on that class, or one launch
  latency (LATENCY_S) per kernel, whichever is longer;
- the step: the CPU's launch time (the H200's wall time where the GPU idled, else its kernels
  at the launch cost the idle points show) and the GPU's time overlap: max of the two.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
RATES = ROOT / "analysis" / "data" / "card_rates.csv"
LATENCY_S = 4e-6  # a small kernel's launch-to-finish time on a GPU (a few microseconds)
COMPUTE = ("gemm", "attention")
MEMORY = ("dequant", "loss", "elementwise", "optimizer")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Rates:
    gemm_tflops: float
    copy_gbps: float
    source: str  # "measured", "proxy", "derived", "assumed", "rule" (per figure: gemm / copy)


def card_rates(profile, dtype: str, kernels_dir: Path | None = None) -> Rates:
    """A card's sustained rates for `dtype`: the cited figure, the H200's own measurement, or
    its datasheet figure by the rule."""
    cited = {(r["profile"], r["rate"]): r for r in _rows(RATES)}
    own = (kernels_dir or ROOT / "results" / "kernels") / "rates.csv"
    if profile.name == "h200" and own.exists():
        for r in _rows(own):
            cited[("h200", r["rate"])] = {**r, "kind": "measured here"}
    ratios = _ratios(cited)
    gemm = cited.get((profile.name, f"gemm-{dtype}")) or cited.get((profile.name, "gemm-fp16"))
    copy = cited.get((profile.name, "copy"))
    sheet_tflops = profile.gpu.bf16_tensor_tflops if dtype == "bf16" else profile.gpu.fp16_tensor_tflops
    return Rates(
        float(gemm["value"])
        if gemm
        else ratios["gemm"] * float(sheet_tflops or profile.gpu.fp16_tensor_tflops),
        float(copy["value"]) if copy else ratios["copy"] * profile.gpu.memory_bandwidth_gbps,
        f"{gemm['kind'] if gemm else 'rule'} / {copy['kind'] if copy else 'rule'}",
    )


def _ratios(cited: dict) -> dict:
    """Median measured/datasheet ratio of the cited cards, per figure."""
    from bench.profiles import load_profile

    out = {"gemm": [], "copy": []}
    for (name, rate), row in cited.items():
        if row["kind"] not in ("measured", "measured here"):
            continue
        try:
            gpu = load_profile(name).gpu
        except Exception:  # a cited card without a profile
            continue
        if rate == "copy":
            out["copy"].append(float(row["value"]) / gpu.memory_bandwidth_gbps)
        elif rate == "gemm-fp16":
            out["gemm"].append(float(row["value"]) / gpu.fp16_tensor_tflops)
    return {k: median(v) for k, v in out.items()}


@dataclass(frozen=True)
class Point:
    """A profiled step: per class {kernels, gpu_ms, flops, bytes}; the step's wall and busy ms."""

    key: tuple  # (model, dtype, grad_ckpt, recipe): steps of any batch and length interpolate
    tokens: int
    seq: int
    classes: dict
    wall_ms: float
    busy_ms: float
    kernels: float


def load_points(path: Path) -> list[Point]:
    """The profiled steps of one kernels CSV (the latest row of each point and class)."""
    by_point: dict[tuple, dict] = {}
    for r in _rows(path):
        point = (r["model"], r["dtype"], r["grad_ckpt"].lower() == "true", r["recipe"] or "peft",
                 int(r["batch_size"]), int(r["seq_len"]))  # fmt: skip
        by_point.setdefault(point, {})[r["class"]] = r
    points = []
    for (*key, batch, seq), classes in by_point.items():
        step = classes.pop("step", None)
        if step is None:
            continue
        points.append(
            Point(
                key=tuple(key),
                tokens=batch * seq,
                seq=seq,
                classes={
                    c: {k: float(v[k] or 0) for k in ("kernels", "gpu_ms", "flops", "bytes")}
                    for c, v in classes.items()
                },  # fmt: skip
                wall_ms=float(step["wall_ms"]),
                busy_ms=float(step["busy_ms"]),
                kernels=float(step["kernels"]),
            )
        )
    return points


class KernelProjection:
    """Step times projected from profiled H200 steps (see the module's docstring)."""

    def __init__(self, kernels_dir: Path | None = None):
        from bench.profiles import load_profile

        self.dir = kernels_dir or ROOT / "results" / "kernels"
        self.files = {p.stem: load_points(p) for p in sorted(self.dir.glob("*.csv")) if p.stem != "rates"}
        self.host = load_profile("h200")
        points = [p for ps in self.files.values() for p in ps]
        if not points:
            raise FileNotFoundError(f"no profiled steps under {self.dir} (qlora-bench kernels)")
        idle = [p.wall_ms / p.kernels for p in points if p.busy_ms < 0.5 * p.wall_ms]
        # the CPU's cost per launched kernel, where the GPU mostly waited for it
        self.launch_ms = median(idle) if idle else min(p.wall_ms / p.kernels for p in points)
        self._rates: dict[tuple, Rates] = {}
        self.efficiency = {}  # share of the copy bandwidth the H200 reached, per memory class
        for cls in MEMORY:
            shares = []
            for p in points:
                c = p.classes.get(cls)
                if c and c["gpu_ms"] > 0 and c["bytes"] > 0:
                    bw = self.rates(self.host, p.key[1]).copy_gbps * 1e9
                    shares.append(min(1.0, (c["bytes"] / bw) / (c["gpu_ms"] / 1000)))
            self.efficiency[cls] = median(shares) if shares else 1.0

    def rates(self, profile, dtype: str) -> Rates:
        """card_rates, read from its files once per card and precision."""
        key = (profile.name, dtype)
        if key not in self._rates:
            self._rates[key] = card_rates(profile, dtype, self.dir)
        return self._rates[key]

    def kernel_set(self, profile) -> str | None:
        """Whose profiled steps stand for `profile`'s card: its own, else those profiled with the
        same attention kernels (the T4's without FlashAttention, the H200's with it), else any."""
        if profile.name in self.files:
            return profile.name
        same = "h200" if "flash" in profile.gpu.sdpa_backends else "t4"
        return same if same in self.files else next(iter(self.files), None)

    def _points(self, profile, kernel_set: str | None) -> list[Point]:
        return self.files.get(kernel_set or self.kernel_set(profile)) or []

    def step_ms(self, profile, model: str, seq: int, batch: int, ckpt: bool, dtype: str,
                recipe: str = "peft", kernel_set: str | None = None) -> float | None:  # fmt: skip
        """The projected wall time of one step (see step_parts): the longer of the CPU's launches
        and the GPU's work, which overlap."""
        parts = self.step_parts(profile, model, seq, batch, ckpt, dtype, recipe, kernel_set)
        return max(parts) if parts else None

    def step_parts(self, profile, model: str, seq: int, batch: int, ckpt: bool, dtype: str,
                   recipe: str = "peft", kernel_set: str | None = None) -> tuple | None:  # fmt: skip
        """(launch ms, GPU ms) of one step on `profile`'s card, from the steps profiled with
        its kernels (or `kernel_set`'s; kernel_set picks); None when no profiled step of that
        model, precision and checkpointing is there to project from (a step of the other half
        precision stands in: the same work). Steps interpolate in tokens (batch x length),
        attention in tokens x length."""
        points = self._points(profile, kernel_set)
        near = [p for p in points if p.key == (model, dtype, ckpt, recipe)]
        if not near:  # the other half precision: the same work, the card's own rates
            other = "bf16" if dtype == "fp16" else "fp16"
            near = [p for p in points if p.key == (model, other, ckpt, recipe)]
        if not near:
            return None
        tokens = seq * batch
        host, card = self.rates(self.host, near[0].key[1]), self.rates(profile, dtype)
        gpu = 0.0
        for cls in {c for p in near for c in p.classes}:
            gpu += self._class_ms(cls, near, tokens, host, card, seq)
        kernels = _interpolate([(p.tokens, p.kernels) for p in near], tokens, proportional=False)
        return kernels * self.launch_ms, gpu

    def _class_ms(
        self, cls: str, near: list[Point], tokens: int, host: Rates, card: Rates, seq: int
    ) -> float:
        # attention's work grows with the length squared, per sequence: batch x length^2
        # (tokens x length); the rest with the tokens
        x = (lambda p: p.tokens * p.seq) if cls == "attention" else (lambda p: p.tokens)
        target = tokens * seq if cls == "attention" else tokens

        def at(field, proportional=True):
            points = [(x(p), p.classes.get(cls, {}).get(field, 0.0)) for p in near]
            return _interpolate(points, target, proportional)

        floor = at("kernels", proportional=False) * LATENCY_S * 1000
        if cls in COMPUTE:
            return max(floor, at("gpu_ms") * host.gemm_tflops / card.gemm_tflops)
        return max(floor, at("bytes") / (card.copy_gbps * 1e9 * self.efficiency[cls]) * 1000)


def _interpolate(points: list[tuple[float, float]], x: float, proportional: bool = True) -> float:
    """Linear in tokens through the two nearest profiled points, never below zero; from one
    point, proportional to tokens (work) or the same (a count of kernels)."""
    points = sorted(set(points))
    if len(points) == 1:
        ((x0, y0),) = points
        return y0 * x / x0 if x0 and proportional else y0
    (x0, y0), (x1, y1) = sorted(points, key=lambda p: abs(p[0] - x))[:2]
    if x1 == x0:
        return y0
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def host_validation(results_dir: Path, kernels_dir: Path | None = None) -> list[dict]:
    """The projection against the H200's own measured steps: every ok peft trial of an emulated
    profile whose kernels were profiled (results/kernels/<profile>.csv: that profile's attention
    kernels, run on the H200), projected for the H200 from that kernel set and compared with its
    measured median step time. The profiled points themselves are left out."""
    projection = KernelProjection(kernels_dir)
    out = []
    for name, points in projection.files.items():
        trials = Path(results_dir) / name / "trials.csv"
        if name == "h200" or not trials.exists():
            continue
        profiled = {(*p.key, p.tokens) for p in points}
        for r in _rows(trials):
            if r["status"] != "ok" or not r.get("step_time_p50_s") or (r.get("recipe") or "peft") != "peft":
                continue
            ckpt, batch, seq = r["grad_ckpt"].lower() == "true", int(r["batch_size"]), int(r["seq_len"])
            if (r["model"], r["dtype"], ckpt, "peft", batch * seq) in profiled:
                continue
            parts = projection.step_parts(
                projection.host, r["model"], seq, batch, ckpt, r["dtype"], kernel_set=name
            )
            if parts is None:
                continue
            measured, got = float(r["step_time_p50_s"]) * 1000, max(parts)
            out.append({"kernels": name, "model": r["model"], "seq_len": seq, "batch_size": batch,
                        "grad_ckpt": ckpt, "dtype": r["dtype"], "measured_ms": measured,
                        "projected_ms": got, "bound": "gpu" if parts[1] >= parts[0] else "launch",
                        "error": got / measured - 1})  # fmt: skip
    return out


def native_validation(results_dir: Path, kernels_dir: Path | None = None) -> list[dict]:
    """The projection against steps measured on the card itself: every ok row that `qlora-bench
    verify` ran natively on a profile's own card (results/<profile>/verify.csv, emulated false),
    projected for that profile and compared with its measured median step time. The H200's
    own rows are host_validation's business."""
    from bench.profiles import load_profile

    projection = KernelProjection(kernels_dir)
    out = []
    for path in sorted(Path(results_dir).glob("*/verify.csv")):
        if path.parent.name == "h200":
            continue
        profile = load_profile(path.parent.name)
        for r in _rows(path):
            native = r.get("emulated", "").lower() == "false"
            if r["status"] != "ok" or not native or not r.get("step_time_p50_s"):
                continue
            ckpt, batch, seq = r["grad_ckpt"].lower() == "true", int(r["batch_size"]), int(r["seq_len"])
            recipe = r.get("recipe") or "peft"
            parts = projection.step_parts(profile, r["model"], seq, batch, ckpt, r["dtype"], recipe)
            if parts is None:
                continue
            measured, got = float(r["step_time_p50_s"]) * 1000, max(parts)
            out.append({"profile": profile.name, "gpu": r.get("gpu_name", ""), "driver": r.get("driver", ""),
                        "model": r["model"], "seq_len": seq, "batch_size": batch, "grad_ckpt": ckpt,
                        "dtype": r["dtype"], "recipe": recipe, "measured_ms": measured,
                        "projected_ms": got, "error": got / measured - 1})  # fmt: skip
    return out
