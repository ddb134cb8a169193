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

    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear projections: the weights NF4 quantises."""
        c = self.config
        h, heads = c["hidden_size"], c["num_attention_heads"]
        kv = c.get("num_key_value_heads", heads) * c.get("head_dim", h // heads)
        return c["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * c["intermediate_size"])

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder linear layer, by module name."""
        return linear_shapes(self.config)

    def head_params(self) -> int:
        """Parameters of the LM head (vocab x hidden), tied to the embeddings or not."""
        return self.config["vocab_size"] * self.config["hidden_size"]

    def loaded_gib_estimate(self) -> float:
        """Rough GPU memory of the loaded QLoRA model, for scheduling only (never reported):
        NF4 linear layers at ~4.2 bits, embeddings and an untied head cast to fp32 by
        prepare_model_for_kbit_training, plus 30% for LoRA, norms and allocator rounding."""
        embeddings = self.head_params() * (1 if self.config.get("tie_word_embeddings") else 2)
        return 1.3 * (self.linear_params() * 4.2 / 8 + embeddings * 4) / 2**30


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of a Llama/Qwen2-style decoder's linear layers, by module name."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, config.get("num_key_value_heads", heads) * head_dim
    inter = config["intermediate_size"]
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def largest_rank(config: dict, target_modules: str) -> tuple[int, str] | None:
    """The largest LoRA rank the targeted layers admit, and the layer that sets it: a rank past
    both dimensions of a layer makes an adapter larger than the layer in every direction (a typo,
    not a setting). None when the layers are not known."""
    try:
        shapes = linear_shapes(config)
    except KeyError:
        return None
    names = (
        shapes if target_modules == "all-linear" else [t for t in target_modules.split(",") if t in shapes]
    )
    return min(((max(shapes[n]), n) for n in names), default=None)


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
