"""The model catalogue: real architectures by their config values (profiles/models.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.errors import Checker, ValidationError
from bench.paths import profiles_dir

CATALOG_FILE = "models.yaml"


@dataclass(frozen=True)
class ModelArch:
    name: str
    hub_id: str | None
    context_len: int
    config: dict = field(hash=False, compare=False)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]


def load_catalog(path: Path | None = None) -> dict[str, ModelArch]:
    path = path or profiles_dir() / CATALOG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(str(path), [f"cannot read: {exc}"]) from exc
    check = Checker(str(path))
    if not isinstance(data, dict):
        check.add("(top level)", "must be a mapping of model name to entry")
        check.raise_if_any()
    models = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            check.add(name, "must be a mapping with hub_id, context_len, config")
            continue
        context_len = check.number(entry, "context_len", f"{name}.")
        config = entry.get("config")
        if not isinstance(config, dict) or "model_type" not in config:
            check.add(f"{name}.config", "must be a mapping with at least model_type")
            continue
        hub_id = entry.get("hub_id")
        if context_len is not None:
            models[name] = ModelArch(name, hub_id, int(context_len), dict(config))
    check.raise_if_any()
    return models
