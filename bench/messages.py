"""What crosses the pipe between the parent and a worker process: typed messages, no loose dicts.

Parent to worker: InitCuda (a spare creates its CUDA context while it waits), PrepareWeights (build
a random-weight checkpoint), Preload (load a trial's model before the trial), TrialRequest (run a
trial). Worker to parent: Ready, Preloaded, Prepared, TrialReply (the row of measurements, and
whether the worker kept its model for the next trial of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.emulation import Plan
from bench.spec import TrialSpec, model_identity


@dataclass(frozen=True)
class ModelSource:
    """Where a trial's weights come from: a local directory, or random weights built from the
    catalogue's config values (cached on disk by name and config)."""

    path: str | None = None
    config: dict | None = field(default=None, hash=False)


@dataclass(frozen=True)
class TrialRequest:
    spec: TrialSpec
    plan: Plan
    source: ModelSource

    @property
    def model(self) -> str:
        """The loaded model's identity: requests with equal ones can share a worker's model."""
        return model_identity(self.spec, self.plan, self.source)


@dataclass(frozen=True)
class Preload:
    request: TrialRequest


@dataclass(frozen=True)
class PrepareWeights:
    name: str
    config: dict
    device: str


@dataclass(frozen=True)
class InitCuda:
    pass


@dataclass(frozen=True)
class Ready:
    pid: int
    visible_devices: str | None = None  # the worker's CUDA_VISIBLE_DEVICES (pinned by --gpus)


@dataclass(frozen=True)
class Preloaded:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Prepared:
    ok: bool
    reason: str = ""


@dataclass
class TrialReply:
    row: dict  # schema columns the trial measured (status and reason always)
    kept: bool = False  # the worker kept its model for the next trial of it (allocator restored)
