"""What a sweep and a boundary search share around a trial: where results live, the columns that
say what ran it, the request a worker gets, and the row that goes to the CSV and to W&B."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from bench import emulation
from bench.config import RunConfig
from bench.envinfo import HostGPU, git_commit, library_versions, nvml_gpu, utc_now
from bench.errors import BenchUsageError
from bench.messages import TrialRequest
from bench.profiles import Profile
from bench.recipes import unsupported_reason as recipe_unsupported
from bench.recipes import versions as recipe_versions
from bench.results import _format, versions_text
from bench.schema import BAND_COLUMNS
from bench.spec import TrialSpec


def results_path(
    results_dir: Path, profile: Profile, device: str, stem: str = "trials", ext: str = "csv"
) -> Path:
    """results/<profile>/<stem>.<ext> for GPU results; CPU runs go to <stem>-cpu.<ext> beside them."""
    name = f"{stem}.{ext}" if device == "cuda" else f"{stem}-cpu.{ext}"
    return Path(results_dir) / profile.name / name


def host_gpu(cfg: RunConfig) -> HostGPU | None:
    return nvml_gpu() if cfg.device == "cuda" else None


def unsupported(cfg: RunConfig, host: HostGPU | None, spec: TrialSpec) -> str | None:
    """Why this trial cannot run on the profile's card (its dtype, or a sequence past the model's
    context), or None."""
    reason = recipe_unsupported(spec.recipe, cfg.device) or emulation.unsupported_reason(
        spec.dtype, cfg.profile, host, cfg.device
    )
    arch = None if cfg.weights_path else cfg.catalog[spec.model]
    if arch is not None and spec.seq_len > arch.context_len:
        reason = f"seq_len {spec.seq_len} is past {arch.name}'s context of {arch.context_len}"
    return reason


def check_recorded(cfg: RunConfig, path: Path, rows: list[dict]) -> None:
    """Refuse to add to (or resume from) rows measured with other facts of the card than this
    profile's: results are filed by profile name, so a copied profile that keeps the name but
    changes the memory, the kernels or bf16 would otherwise be answered with the other card's
    rows. Then the same for the recipes' own libraries (check_stack)."""
    _check_card(cfg, path, rows)
    check_stack(cfg, path, rows)


def check_stack(cfg: RunConfig, path: Path, rows: list[dict]) -> None:
    """Refuse to add to rows of a recipe measured with another version of its own library (TRL
    1.15 fuses the LM head, TRL 0.25 materialises the logits): a row's key does not name the
    version, so a resumed run would keep the other version's points and measure the rest with
    this one, one table from two stacks."""
    for recipe in dict.fromkeys(cfg.axes.values.get("recipe", ())):
        now = recipe_versions(recipe).split(";")[0]
        if not now or now.endswith("="):  # the base stack, or not installed (refused elsewhere)
            continue
        for row in rows:
            was = (row.get("recipe_versions") or "").split(";")[0]
            if row.get("recipe") == recipe and was and not was.endswith("=") and was != now:
                raise BenchUsageError(
                    f"{path} holds rows of recipe {recipe} measured with {versions_text(was)}, and "
                    f"{versions_text(now)} is installed. A row's key does not name the version, so this "
                    "run would keep those points and measure the rest with another stack: give this "
                    f"version its own --results-dir, or install {was.replace('=', '==')}"
                )


def _check_card(cfg: RunConfig, path: Path, rows: list[dict]) -> None:
    gpu, found = cfg.profile.gpu, {}
    cap = _format(gpu.allocator_cap_gib)
    kernels = ",".join(gpu.sdpa_backends)
    for row in rows:
        band = row.get("purpose") in BAND_COLUMNS  # probed at a moved cap on purpose
        if row.get("emulated") == "true" and not band and row.get("mem_cap_gib") not in ("", cap):
            found.setdefault("allocator cap (mem_cap_gib)", (row["mem_cap_gib"], cap))
        if row.get("sdpa_backends") and row["sdpa_backends"] != kernels:
            found.setdefault("SDPA kernels (sdpa_backends)", (row["sdpa_backends"], kernels))
        if row.get("dtype") == "bf16" and row.get("status") in ("ok", "oom", "unsupported"):
            recorded = row["status"] != "unsupported" or "compute capability" not in row.get("reason", "")
            if recorded != gpu.native_bf16:
                found.setdefault("bf16 support", (_yes(recorded), _yes(gpu.native_bf16)))
    if found:
        diffs = "; ".join(
            f"{what}: {old} recorded, {new} in {cfg.profile.source}" for what, (old, new) in found.items()
        )
        raise BenchUsageError(
            f"{path} was measured for another card than profile {cfg.profile.name!r} describes now "
            f"({diffs}). Results are filed by profile name: give a changed profile a name of its own, "
            "or another --results-dir"
        )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


class TrialRunner:
    """A run's plan (emulation), its environment columns, and rows assembled from a trial's spec
    and measurements."""

    def __init__(self, cfg: RunConfig, host: HostGPU | None):
        self.cfg, self.host = cfg, host
        self.plan = replace(emulation.plan(cfg.profile, cfg.device, host), threads=cfg.worker_threads)
        self.env = self._environment()

    def _environment(self) -> dict:
        import torch

        cfg, plan, host = self.cfg, self.plan, self.host
        env = {
            "profile": cfg.profile.name,
            "device": cfg.device,
            "emulated": plan.emulated,
            "host_gpu": plan.host_gpu,
            "mem_cap_gib": plan.cap_gib,
            "sdpa_backends": ",".join(plan.sdpa_backends),
            "cuda": torch.version.cuda or "",
            "git_commit": git_commit(),
            "image": os.environ.get("QLORA_BENCH_IMAGE", ""),
            **library_versions(),
        }
        if host is not None:
            env.update(
                gpu_name=host.name,
                driver=host.driver,
                gpu_total_gib=host.total_gib,
                gpu_compute_capability=".".join(map(str, host.compute_capability)),
            )
        return env

    def request(self, spec: TrialSpec) -> TrialRequest:
        return TrialRequest(spec, self.plan, self.cfg.source(spec.model))

    def row(self, spec: TrialSpec, measured: dict, **extra) -> dict:
        """The CSV row of a trial: what ran, where, what was measured. The host GPU's name and
        driver are NVML's (the worker's torch view of the name is the same card)."""
        row = {**spec.to_row(), **self.env, **measured, "trial_key": spec.key, **extra}
        row["recipe_versions"] = recipe_versions(spec.recipe)
        if self.host is not None:
            row.update(gpu_name=self.host.name, driver=self.host.driver)
        row["timestamp_utc"] = utc_now()
        return row
