"""A model's architecture as the cross-architecture memory predictor sees it (analysis/
arch_predict.py fits it, `qlora-bench predict --config` uses it): its config values (a Hugging
Face config.json, or the catalogue's) and the terms of a QLoRA step's peak memory they give.
Pure Python: `predict` answers without numpy or pandas."""

from __future__ import annotations

from bench.errors import BenchUsageError

GIB = 2**30
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# The predictor's terms, in GiB at a coefficient of 1 (each fitted coefficient scales its term):
FEATURES = (
    "fixed",
    "NF4 base weights (0.5 B a parameter)",
    "embedding and LM head (2 B a parameter)",
    "LoRA adapters, gradients and AdamW states (16 B a parameter)",
    "residual stream, every layer (2 B x hidden x layers a token)",
    "MLP activations, one layer (2 B x intermediate a token)",
    "MLP activations, every layer (2 B x intermediate x layers a token)",
    "logits (4 B x vocabulary a token)",
    "attention scores, one layer (4 B x heads x length a token; cards without flash)",
    "attention scores, every layer (4 B x heads x layers x length a token; cards without flash)",
)


def architecture(config: dict, source: str) -> dict:
    """The values the predictor needs from a model's config; a usage error naming what is
    missing or wrong, and where."""
    if not isinstance(config, dict):
        raise BenchUsageError(f"{source}: not a model config (a JSON object such as config.json)")
    config = config.get("text_config") or config  # multimodal configs nest the language model's
    bad = [k for k in REQUIRED if not isinstance(config.get(k), int) or config[k] <= 0]
    if bad:
        raise BenchUsageError(f"{source}: needs positive integer {', '.join(bad)} (a decoder's config.json)")
    h, heads = config["hidden_size"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    i, layers, vocab = config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    projections = [(h, heads * d), (h, kv * d), (h, kv * d), (heads * d, h), (h, i), (h, i), (i, h)]
    return {
        "hidden": h,
        "layers": layers,
        "heads": heads,
        "intermediate": i,
        "vocab": vocab,
        "body": layers * sum(a * b for a, b in projections),
        "embeddings": vocab * h * (1 if config.get("tie_word_embeddings", False) else 2),
        "lora_per_rank": layers * sum(a + b for a, b in projections),  # all linear layers
    }


def features(arch: dict, rank: int, batch: int, seq: int, flash: bool) -> list[float]:
    """The terms of FEATURES for one step (the last two only on cards without flash attention,
    whose math kernel keeps fp32 scores)."""
    tokens = batch * seq
    x = [
        1.0,
        arch["body"] * 0.5 / GIB,
        arch["embeddings"] * 2 / GIB,
        rank * arch["lora_per_rank"] * 16 / GIB,
        tokens * arch["hidden"] * arch["layers"] * 2 / GIB,
        tokens * arch["intermediate"] * 2 / GIB,
        tokens * arch["intermediate"] * arch["layers"] * 2 / GIB,
        tokens * arch["vocab"] * 4 / GIB,
    ]
    if not flash:
        scores = tokens * seq * arch["heads"] * 4 / GIB
        x += [scores, scores * arch["layers"]]
    return x
