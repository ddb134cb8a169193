"""`qlora-bench kernels`: where a QLoRA step's time goes, kernel by kernel (the data of a per-
kernel speed projection).

Each point of a small grid is loaded and stepped as a trial does (bench.trial: the same model
preparation, warm-up and training step, under the profile's attention kernels and dtypes), then
`--profile-steps` steps are timed, and as many more run under torch.profiler. Every GPU kernel
is put in a class by its name and the operators that launched it (`kernel_class`), with the work
its launching operator did: FLOPs for matrix products (torch's own count, from the shapes),
bytes for the rest (its inputs read and its output written, from their shapes and dtypes). One
row per point and class, per step, plus a `step` row: the step's wall time (unprofiled), the
time the GPU was busy (the union of the kernels' intervals), the CPU time of the outermost
operators, and the launches. On a CPU (the tests), each innermost operator stands in for a
kernel, its CPU time for the GPU's.

The rows say where they ran (GPU, driver, versions) and whether the kernels were a smaller
card's (`emulated`); they go to results/kernels/<profile>.csv (`--out`).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import click

from bench.errors import BenchUsageError
from bench.options import BATCH_SIZES, DEVICE, DTYPES, GRAD_CKPT, MODELS, RANKS, SEQ_LENS, csv_list

CLASSES = (
    "gemm",  # tensor-core matrix products of the base layers, adapters and LM head
    "dequant",  # bitsandbytes' NF4 -> fp16/bf16 dequantisation
    "attention",  # SDPA's fused kernels, or the math path's products and softmax
    "loss",  # cross-entropy: log-softmax and NLL over the vocabulary, forward and backward
    "optimizer",  # AdamW, GradScaler's unscale and inf check, zeroing gradients
    "elementwise",  # norms, activations, RoPE, residual adds, casts, copies
)
_ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")
_LOSS_OPS = ("cross_entropy", "log_softmax", "nll_loss", "logsoftmax", "nllloss")
_OPTIMIZER_OPS = ("optimizer.", "_foreach", "adam", "unscale", "zero_grad")
_GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm")
FIELDS = [
    "trial_key", "profile", "emulated", "model", "seq_len", "batch_size", "lora_rank", "dtype",
    "grad_ckpt", "recipe", "sdpa_backend_used", "class", "kernels", "gpu_ms", "flops", "bytes",
    "wall_ms", "busy_ms", "cpu_op_ms", "steps", "device", "gpu_name", "driver", "torch",
    "transformers", "peft", "bitsandbytes", "git_commit",
]  # fmt: skip
_SIZES = {"float": 4, "c10::half": 2, "c10::bfloat16": 2, "double": 8, "long": 8, "int": 4,
          "bool": 1, "unsigned char": 1, "signed char": 1, "c10::float8_e4m3fn": 1}  # fmt: skip


def kernel_class(kernel: str, ops: list[str], flops: float = 0) -> str:
    """The class of a kernel, from its name, its launching operators (innermost first) and the
    FLOPs torch counted for the innermost."""
    name, chain = kernel.lower(), [op.lower() for op in ops]
    if any(o in op for op in chain for o in _OPTIMIZER_OPS):
        return "optimizer"
    if "dequantize" in name or any("dequantize" in op for op in chain):
        return "dequant"
    if any(o in op for op in chain for o in _ATTENTION_OPS) or any(
        k in name for k in ("flash", "fmha", "attention")
    ):
        return "attention"
    if any(o in op for op in chain for o in _LOSS_OPS) or "cross_entropy" in name:
        return "loss"
    if (
        flops
        or (chain and chain[0] in _GEMM_OPS)
        or any(k in name for k in ("gemm", "nvjet", "xmma", "cutlass"))
    ):
        return "gemm"
    return "elementwise"


def _bytes(event) -> int:
    """Bytes an operator moves: its tensor inputs read, and an output as large as the largest.
    torch before 2.13 keeps no dtypes in its events: then 2 bytes an element (the step's
    fp16/bf16; fp32 tensors count half)."""
    shapes = event.input_shapes or []
    dtypes = getattr(event, "input_dtypes", None) or ["c10::Half"] * len(shapes)
    sizes = [
        math.prod(shape) * _SIZES.get(str(dtype).lower(), 2)
        for shape, dtype in zip(shapes, dtypes, strict=False)
        if shape and isinstance(shape, list) and all(isinstance(d, int) for d in shape)
    ]
    return sum(sizes) + max(sizes, default=0)


def _chain(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def summarise(events, steps: int, wall_s: float, device: str) -> list[dict]:
    """Per class: kernels, GPU ms, FLOPs and bytes per step; then the `step` row."""
    totals = defaultdict(lambda: {"kernels": 0, "gpu_ms": 0.0, "flops": 0, "bytes": 0})
    intervals, cpu_ms = [], 0.0
    for event in events:
        if event.device_type.name == "CUDA":  # a kernel's own event: when the GPU ran it
            intervals.append((event.time_range.start, event.time_range.end))
            continue
        if not event.cpu_parent:
            cpu_ms += event.cpu_time_total / 1000
        if device == "cuda":
            launched = [(k.name, k.duration) for k in event.kernels]
        elif not event.cpu_children and event.name.startswith("aten::"):  # a CPU's "kernel"
            launched = [(event.name, event.time_range.elapsed_us())]
            intervals.append((event.time_range.start, event.time_range.end))
        else:
            launched = []
        if not launched:
            continue
        chain, flops = _chain(event), getattr(event, "flops", 0) or 0
        for i, (name, duration_us) in enumerate(launched):
            total = totals[kernel_class(name, chain, flops)]
            total["kernels"] += 1
            total["gpu_ms"] += duration_us / 1000
            if i == 0:  # the operator's work, once
                total["flops"] += flops
                total["bytes"] += 0 if flops else _bytes(event)
    busy, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    rows = [
        {
            "class": name,
            "kernels": t["kernels"] / steps,
            "gpu_ms": t["gpu_ms"] / steps,
            "flops": t["flops"] / steps,
            "bytes": t["bytes"] / steps,
        }  # fmt: skip
        for name, t in sorted(totals.items(), key=lambda item: CLASSES.index(item[0]))
    ]
    rows.append(
        {
            "class": "step",
            "kernels": sum(t["kernels"] for t in totals.values()) / steps,
            "gpu_ms": sum(t["gpu_ms"] for t in totals.values()) / steps,
            "wall_ms": 1000 * wall_s / steps,
            "busy_ms": busy / 1000 / steps,
            "cpu_op_ms": cpu_ms / steps,
        }  # fmt: skip
    )
    return rows


def profile_point(request, steps: int) -> tuple[list[dict], str]:
    """Load and warm up as a trial does, then profile `steps` training steps: (rows, the SDPA
    backend that ran)."""
    from torch.profiler import ProfilerActivity, profile

    from bench.batches import BackendProbe
    from bench.memory import MemoryProbe
    from bench.qlora import sdpa_context
    from bench.trial import ModelSlot, _prepare_device, load_into, training_step

    spec, plan = request.spec, request.plan
    device, slot, probe = plan.device, ModelSlot(), MemoryProbe(plan.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    try:
        with sdpa_context(plan.sdpa_backends, device):
            _prepare_device(plan)
            load_into(slot, request, probe)
            step, _, _ = training_step(slot.model, spec, device)
            with BackendProbe() as backends:
                step()
            for _ in range(spec.warmup_steps - 1):
                step()
            probe.sync()
            started = time.perf_counter()  # the wall time unprofiled: the profiler slows the CPU
            for _ in range(steps):
                step()
            probe.sync()
            wall = time.perf_counter() - started
            with profile(activities=activities, record_shapes=True, with_flops=True) as prof:
                for _ in range(steps):
                    step()
                probe.sync()
            return summarise(prof.events(), steps, wall, device), backends.used
    finally:
        slot.drop(device)


def run_kernels(cfg, steps: int, out: Path) -> list[str]:
    """Profile every point of `cfg`'s grid into `out`; the keys of the points profiled, now or
    by an earlier run."""
    from bench.runner import TrialRunner, host_gpu
    from bench.spec import expand

    runner = TrialRunner(cfg, host_gpu(cfg))
    profiled = []
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    # points whose step row is written are done: a time-cut run resumes (a point cut while its
    # rows were written has no step row, and runs again; its newer rows are the ones read)
    done = set()
    if not new:
        with out.open(newline="") as handle:
            done = {(r["profile"], r["trial_key"]) for r in csv.DictReader(handle) if r["class"] == "step"}
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore", lineterminator="\n")
        if new:
            writer.writeheader()
        for spec in expand(cfg.axes):
            if (cfg.profile.name, spec.key) in done:
                click.echo(f"{spec.key}: profiled already ({out})")
                profiled.append(spec.key)
                continue
            try:
                rows, backend = profile_point(runner.request(spec), steps)
            except Exception as exc:  # an OOM or a library's refusal: say so, go on
                click.echo(f"{spec.key}: {type(exc).__name__}: {str(exc)[:200]}", err=True)
                continue
            base = runner.row(spec, {}, sdpa_backend_used=backend, steps=steps)
            for row in rows:
                writer.writerow({**base, **{k: _round(v) for k, v in row.items()}})
            handle.flush()
            profiled.append(spec.key)
            step = rows[-1]
            click.echo(
                f"{spec.model} seq {spec.seq_len} batch {spec.batch_size} {spec.dtype}"
                f"{' ckpt' if spec.grad_ckpt else ''} {spec.recipe}: {step['wall_ms']:.1f} ms/step, "
                f"GPU busy {step['busy_ms']:.1f} ms, {step['kernels']:.0f} kernels"
            )
    return profiled


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


@click.command()
@click.option("--profile", "profile_name", required=True, help="Profile whose kernels and dtypes run.")
@DEVICE
@MODELS
@SEQ_LENS
@BATCH_SIZES
@RANKS
@DTYPES
@GRAD_CKPT
@click.option("--recipe", "recipes", callback=csv_list(str), help="Recipes (default peft).")
@click.option("--profile-steps", "steps", type=click.IntRange(1), default=3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Default results/kernels/<profile>.csv.")
@click.option(
    "--rates",
    is_flag=True,
    help="Instead: measure this GPU's sustained matrix-product and copy rates, into "
    "results/kernels/rates.csv (or --out).",
)
def kernels(
    profile_name, device, models, seq_lens, batch_sizes, ranks, dtypes, grad_ckpt, recipes, steps, out, rates
):
    """Profile training steps: GPU time, FLOPs and bytes by kernel class (for speed projection)."""
    from bench import config

    if rates:
        from bench.rates import write_rates

        write_rates(device, out or Path("results") / "kernels" / "rates.csv")
        return
    try:
        if "trl" in (recipes or ()):
            raise BenchUsageError(
                "--recipe trl: kernels profiles the trial's own training step, and TRL's runs "
                "inside SFTTrainer; profile peft, loop, liger or unsloth"
            )
        cfg = config.sweep_config(
            profile_name=profile_name, device=device, models=models, seq_lens=seq_lens,
            batch_sizes=batch_sizes, ranks=ranks, dtypes=dtypes, grad_ckpt=grad_ckpt,
            lora_alpha_ratio=2.0, lora_dropout=0.05, target_modules="all-linear", optimizer="adamw_torch",
            warmup_steps=2, measured_steps=1, weights=None, results_dir=Path("results"),
            timeout_s=900.0, wandb_mode="off", overwrite=False, no_skip_implied=True,
            spare_workers=0, workload="step", sft_steps=1, sft_lr=1e-4, sft_eval_samples=1,
            extra_axes={"recipe": recipes},
        )  # fmt: skip
        points = run_kernels(cfg, steps, out or Path("results") / "kernels" / f"{cfg.profile.name}.csv")
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(2)
    if not points:
        click.echo("qlora-bench: error: no point could be profiled", err=True)
        sys.exit(1)
