"""What the CLI's commands do with a validated configuration: run it, show progress, report."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bench.catalog import load_catalog
from bench.config import CPU_MODEL, BoundaryConfig, SweepConfig, boundary_config_of, resolve_weights
from bench.errors import BenchUsageError
from bench.profiles import available_profiles, load_profile
from bench.spec import AXIS_FIELDS
from bench.sweep import plan_sweep, run_sweep, sweep_store


def _progress(console: Console) -> Progress:
    """The progress bar of sweeps and boundary searches: what runs, count, elapsed, ETA."""
    return Progress(
        TextColumn("{task.description}", style="dim"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def run_sweep_command(cfg: SweepConfig, dry_run: bool, boundaries: bool = False, gpus=None) -> int:
    console = Console(stderr=True)
    gpus = host_gpus(cfg.device, gpus)  # before anything runs: a bad --gpus is exit 2
    store = sweep_store(cfg)
    if dry_run:
        planned = plan_sweep(cfg, None, store)
        table = Table(title=f"{cfg.profile.name}: {len(planned)} points -> {store.path}")
        for column in (*AXIS_FIELDS, "action"):
            table.add_column(column)
        for p in planned:
            table.add_row(*(_cell(getattr(p.spec, name)) for name in AXIS_FIELDS), p.action)
        Console(width=None if sys.stdout.isatty() else 200).print(table)  # piped: no cut-off cells
        return 0
    with _progress(console) as progress:
        written = run_sweep(cfg, progress, gpus)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(written.items())) or "nothing to do"
    console.print(f"{cfg.profile.name}: {summary} -> {store.path}")
    if boundaries:
        _run_boundaries([boundary_config_of(cfg)], None, console, gpus=gpus)
    return 1 if written.get("error") or written.get("timeout") else 0


def _cell(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def list_profiles_command() -> int:
    catalog = load_catalog()
    table = Table(title="profiles")
    for column in ("name", "aliases", "usable GiB", "cc", "bf16", "description"):
        table.add_column(column)
    seen = set()
    for path in available_profiles().values():
        if path in seen:
            continue
        seen.add(path)
        p = load_profile(str(path), set(catalog))
        table.add_row(
            p.name,
            ",".join(p.aliases),
            f"{p.gpu.usable_vram_gib:g}",
            ".".join(map(str, p.gpu.compute_capability)),
            "yes" if p.gpu.native_bf16 else "no",
            p.description,
        )
    Console().print(table)
    return 0


def run_boundary_command(
    cfgs: list[BoundaryConfig], parallel: int | None, time_budget=None, gpus=None, scheduler=None
) -> int:
    gpus = host_gpus(cfgs[0].device, gpus)
    _run_boundaries(cfgs, parallel, Console(stderr=True), time_budget, gpus, scheduler)
    return 0


def host_gpus(device: str, text: str | None) -> list[int] | None:
    """--gpus resolved against this host's GPUs, which must be of one kind (the emulation plan
    is made for the first)."""
    from bench.envinfo import nvml_gpu
    from bench.gpus import nvml_count, parse_gpus

    if text is None:
        return None
    if device != "cuda":
        raise BenchUsageError("--gpus: needs --device cuda (GPUs of this host)")
    gpus = parse_gpus(text, nvml_count())
    names = {gpu: getattr(nvml_gpu(gpu), "name", None) for gpu in gpus}
    if len(set(names.values())) != 1:
        raise BenchUsageError(f"--gpus: one kind of GPU at a time, not {names}")
    return gpus


def _run_boundaries(
    cfgs: list[BoundaryConfig], parallel, console, time_budget=None, gpus=None, scheduler=None
) -> None:
    """Search the boundaries of every config's profile together (on a Dask cluster with
    `scheduler`: bench.boundary.dask_run)."""
    from bench.boundary import BoundaryRun, run_boundaries

    if scheduler and (time_budget or gpus or parallel):
        raise BenchUsageError(
            "--scheduler: the cluster's workers place the searches (no --parallel, --gpus or --time-budget)"
        )
    runs = [BoundaryRun(cfg) for cfg in cfgs]
    for run in runs:  # a band moves an emulated card's allocator cap: a run without one has none
        if run.cfg.band_gib and run.runner.plan.cap_gib is None:
            console.print(
                f"{run.cfg.profile.name}: no band: --band moves the allocator cap of an emulated card, "
                "and this run has none (the card itself, or CPU); its boundaries are recorded without one"
            )
            run.cfg = replace(run.cfg, band_gib=0.0)  # nor is one recorded without a band searched again
    with _progress(console) as progress:
        if scheduler:
            from bench.boundary.dask_run import run_on_dask

            summaries = run_on_dask(runs, scheduler, progress)
        else:
            summaries = run_boundaries(runs, parallel, progress, time_budget, gpus)
    for run, summary in zip(runs, summaries, strict=True):
        left = f"; {summary['left']} left for a rerun (time budget)" if summary["left"] else ""
        console.print(
            f"{run.cfg.profile.name}: {summary['boundaries']} boundaries ({summary['verified']} "
            f"verified), {summary['trials']} trials in {summary['wall_s']} s with "
            f"{summary['parallel']} at once{left} -> {run.store.path}"
        )


def run_sft_command(
    profile_name,
    device,
    weights,
    dataset_size,
    seed,
    dtype,
    lora_rank,
    grad_ckpt,
    lr,
    batch_size,
    max_steps,
    eval_every,
    eval_samples,
    max_new_tokens,
    out,
    fresh,
    wandb=False,
) -> int:
    import shutil

    from bench import emulation
    from bench.envinfo import nvml_gpu
    from bench.extraction import data, sft, tiny

    catalog = load_catalog()
    profile = load_profile(profile_name, set(catalog))
    host = nvml_gpu() if device == "cuda" else None
    plan = emulation.plan(profile, device, host)
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    reason = emulation.unsupported_reason(dtype, profile, host, device)
    if reason:
        raise BenchUsageError(f"--dtype {dtype}: {reason}")
    splits = data.generate(dataset_size, seed)
    # Real models are pretrained: the usual QLoRA settings. The tiny CPU model starts from noise
    # and needs a higher rate and more steps to learn the format (0 -> 1.0 on CPU in fp32, measured).
    if weights:
        source, name = resolve_weights(weights), Path(weights).name
        defaults = {"lr": 2e-4, "batch_size": 8, "max_steps": 300, "eval_every": 100}
    elif device == "cpu":
        texts = [r["prompt"] + "\n" + r["completion"] for r in splits["train"]]
        source, name = str(tiny.build_tiny(catalog[CPU_MODEL].config, texts)), CPU_MODEL
        defaults = {"lr": 3e-3, "batch_size": 16, "max_steps": 800, "eval_every": 200}
    else:
        raise BenchUsageError(
            "format success needs a model that can follow instructions, and random weights cannot: "
            "pass --weights with a local model directory or a hub id already in the HF cache "
            "(e.g. --weights Qwen/Qwen2.5-0.5B-Instruct after `huggingface-cli download "
            "Qwen/Qwen2.5-0.5B-Instruct` on a machine with network), or use --device cpu for the tiny model"
        )
    out = out or Path("results") / "sft" / f"{name}-{device}"
    cfg = sft.SFTConfig(
        source=source,
        out=out,
        device=device,
        dtype=dtype,
        lora_rank=lora_rank,
        lora_alpha=2 * lora_rank,
        grad_ckpt=grad_ckpt,
        lr=lr or defaults["lr"],
        batch_size=batch_size or defaults["batch_size"],
        max_steps=max_steps or defaults["max_steps"],
        eval_every=eval_every or defaults["eval_every"],
        eval_samples=eval_samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        wandb=wandb,
        dataset_size=dataset_size,
    )
    if fresh and out.exists():
        shutil.rmtree(out)
    sft.check_resume(cfg)
    try:
        data.save(splits, out / "data")
    except OSError as exc:
        raise BenchUsageError(f"cannot write the run to {out}: {exc}") from exc
    console = Console(stderr=True)
    result = sft.train(cfg, splits, plan, log=console.print)
    console.print(
        f"format success {result['before']:.2f} -> {result['after']:.2f} on "
        f"{eval_samples} held-out prompts -> {result['curves']}"
    )
    return 0
