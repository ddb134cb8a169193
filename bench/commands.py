"""What the CLI's commands do: build a validated configuration, run it, report."""

from __future__ import annotations

import os
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
from bench.errors import BenchUsageError
from bench.profiles import DTYPES, available_profiles, load_profile
from bench.spec import Axes
from bench.sweep import SweepConfig, plan_sweep, results_path, run_sweep

CPU_MODEL = "tiny"


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


def resolve_weights(weights: str) -> str:
    """A local directory with config.json, or a hub id already in the HF cache; else explain."""
    path = Path(weights).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BenchUsageError(f"--weights {weights}: directory has no config.json")
        return str(path.resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(weights, local_files_only=True)
    except Exception as exc:
        raise BenchUsageError(
            f"--weights {weights}: not a local directory and not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). qlora-bench does not "
            f"download: fetch it where there is network (`huggingface-cli download {weights}`) "
            f"and mount or copy the cache, or pass a local directory. ({type(exc).__name__})"
        ) from None


def build_config(
    profile_name,
    device,
    models,
    seq_lens,
    batch_sizes,
    ranks,
    dtypes,
    grad_ckpt,
    lora_alpha_ratio,
    lora_dropout,
    target_modules,
    optimizer,
    warmup_steps,
    measured_steps,
    weights,
    results_dir,
    timeout_s,
    overwrite,
    no_skip_implied,
    spare_workers,
    workload="step",
    sft_steps=100,
    sft_lr=2e-4,
    sft_eval_samples=20,
    wandb_mode="off",
    **_,
) -> SweepConfig:
    catalog = load_catalog()
    profile = load_profile(profile_name, set(catalog))
    grid = profile.grid
    if weights:
        weights_path = resolve_weights(weights)
        models = (weights,)
    else:
        weights_path = None
        models = models or ((CPU_MODEL,) if device == "cpu" else grid.models)
        unknown = [m for m in models if m not in catalog]
        if unknown:
            raise BenchUsageError(f"--models: unknown model(s) {unknown}; known: {sorted(catalog)}")
    dtypes = dtypes or grid.dtypes
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise BenchUsageError(f"--dtypes: unknown {bad}; choose from {', '.join(DTYPES)}")
    axes = Axes(
        models=tuple(models),
        seq_lens=seq_lens or grid.seq_lens,
        batch_sizes=batch_sizes or grid.batch_sizes,
        lora_ranks=ranks or grid.lora_ranks,
        dtypes=tuple(dtypes),
        grad_ckpt=grad_ckpt or grid.grad_ckpt,
    )
    settings = dict(
        lora_alpha_ratio=lora_alpha_ratio,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        optimizer=optimizer,
        warmup_steps=warmup_steps,
        measured_steps=measured_steps,
        weights=weights or "random",
        workload="step" if workload == "step" else f"sft:{sft_steps}:{sft_lr:g}:{sft_eval_samples}",
    )
    return SweepConfig(
        profile=profile,
        catalog=catalog,
        axes=axes,
        device=device,
        trial_settings=settings,
        weights_path=weights_path,
        results_dir=results_dir,
        overwrite=overwrite,
        skip_implied=not no_skip_implied,
        timeout_s=timeout_s,
        spare_workers=(1 if device == "cuda" else 0) if spare_workers is None else spare_workers,
        wandb_mode=wandb_mode,
    )


def run_sweep_command(dry_run: bool, boundaries: bool = False, **options) -> int:
    console = Console(stderr=True)
    cfg = build_config(**options)
    target = results_path(cfg.results_dir, cfg.profile, cfg.device)
    if dry_run:
        from bench.results import ResultsFile

        planned = plan_sweep(cfg, ResultsFile(target), None)
        table = Table(title=f"{cfg.profile.name}: {len(planned)} points -> {target}")
        for column in ("model", "seq", "batch", "rank", "dtype", "grad ckpt", "action"):
            table.add_column(column)
        for p in planned:
            s = p.spec
            table.add_row(
                s.model,
                str(s.seq_len),
                str(s.batch_size),
                str(s.lora_rank),
                s.dtype,
                "on" if s.grad_ckpt else "off",
                p.action,
            )
        Console().print(table)
        return 0
    with _progress(console) as progress:
        written = run_sweep(cfg, progress)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(written.items())) or "nothing to do"
    console.print(f"{cfg.profile.name}: {summary} -> {target}")
    if boundaries:
        _run_boundaries([(cfg, cfg.profile.grid.reference_seq_lens)], BOUNDARY_AXES, None, console)
    return 1 if written.get("error") else 0


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


BOUNDARY_AXES = ("seq_len", "batch_size")


def run_boundary_command(
    profile_names, ref_seq_lens, boundary_axes, parallel, time_budget=None, reverify=False, **options
) -> int:
    bad = [a for a in boundary_axes if a not in BOUNDARY_AXES]
    if bad:
        raise BenchUsageError(f"--axes: unknown {bad}; choose from {', '.join(BOUNDARY_AXES)}")
    defaults = dict(
        seq_lens=None,
        batch_sizes=None,
        lora_dropout=0.05,
        target_modules="all-linear",
        weights=None,
        no_skip_implied=False,
        spare_workers=None,
    )
    cfgs = {}
    for name in profile_names:  # one run of several profiles shares the slots and the GPU
        cfg = build_config(profile_name=name, **{**defaults, **options})
        cfgs.setdefault(cfg.profile.name, cfg)  # an alias named twice runs once
    jobs = [(cfg, ref_seq_lens or cfg.profile.grid.reference_seq_lens) for cfg in cfgs.values()]
    _run_boundaries(jobs, boundary_axes, parallel, Console(stderr=True), time_budget, reverify)
    return 0


def _run_boundaries(jobs, boundary_axes, parallel, console, time_budget=None, reverify=False) -> None:
    """`jobs`: (config, reference lengths) per profile, searched together."""
    from bench.boundary import BoundaryRun, run_boundaries

    runs = [BoundaryRun(cfg, tuple(refs), tuple(boundary_axes), reverify) for cfg, refs in jobs]
    with _progress(console) as progress:
        summaries = run_boundaries(runs, parallel, progress, time_budget)
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
    if fresh and out.exists():
        shutil.rmtree(out)
    data.save(splits, out / "data")
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
    )
    console = Console(stderr=True)
    result = sft.train(cfg, splits, plan.to_worker(), log=console.print)
    console.print(
        f"format success {result['before']:.2f} -> {result['after']:.2f} on "
        f"{eval_samples} held-out prompts -> {result['curves']}"
    )
    return 0
