"""The training stacks of the recipe axis: what each needs installed, where it runs, and the
preparation that is its own (the libraries' code, not a re-implementation).

- peft: prepare_model_for_kbit_training (fp32 upcast of every parameter that is not 4-bit),
  LoRA, the step (bench.trial).
- loop: a hand-written loop's preparation (checkpointing, no upcast), LoRA, the same step.
- trl: TRL's SFTTrainer prepares the model and runs its own train() (bench.trl_run).
- liger: peft's preparation with Liger Kernel patched into the model instance, as transformers'
  Trainer does for use_liger_kernel=True (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU
  where the architecture is supported), then the step.
- unsloth: Unsloth's FastLanguageModel load and get_peft_model (its "unsloth" checkpointing
  when checkpointing is on), then the step; its fused loss is in its patched forward.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    name: str
    packages: tuple[str, ...]  # distributions it needs beyond the base install (their versions go in rows)
    modules: tuple[str, ...]  # what must import
    gpu_only: str = ""  # why it cannot run on the CPU, when it cannot


RECIPES = {
    "peft": Recipe("peft", (), ()),
    "loop": Recipe("loop", (), ()),
    "trl": Recipe("trl", ("trl", "datasets"), ("trl", "datasets")),
    "liger": Recipe(
        "liger", ("liger_kernel",), ("liger_kernel",), "Liger Kernel's kernels are Triton (GPU only)"
    ),
    "unsloth": Recipe(
        "unsloth",
        ("unsloth", "unsloth_zoo", "trl"),
        ("unsloth",),
        "Unsloth runs on NVIDIA/AMD/Intel GPUs only",
    ),
}
EXTRA = {"trl": "trl", "liger": "liger", "unsloth": "unsloth"}


def missing(recipe: str) -> str | None:
    """A clear message when the recipe's library is not installed, else None."""
    absent = [m for m in RECIPES[recipe].modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (
        f"--recipe {recipe} needs {', '.join(absent)}, which is not installed: "
        f"pip install 'qlora-bench[{EXTRA[recipe]}]'"
    )


def unsupported_reason(recipe: str, device: str) -> str | None:
    gpu_only = RECIPES[recipe].gpu_only
    return f"recipe {recipe} on {device}: {gpu_only}" if gpu_only and device != "cuda" else None


def versions(recipe: str) -> str:
    """'name=version;...' of the recipe's own libraries (the base stack has its own columns)."""
    out = []
    for name in RECIPES[recipe].packages:
        try:
            out.append(f"{name}={metadata.version(name.replace('_', '-'))}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=")
    return ";".join(out)


def apply_liger(model) -> None:
    """Trainer's use_liger_kernel=True, on the loaded model (before LoRA wraps it)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)


def ensure_tokenizer(directory: Path, vocab_size: int) -> None:
    """Unsloth loads a tokenizer from the model directory; a random-weights checkpoint has none.
    Write a word-level one (ids only matter for memory and speed) once, beside the weights."""
    if (directory / "tokenizer.json").exists():
        return
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3}
    vocab.update({f"t{i}": i for i in range(4, min(vocab_size, 1000))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tmp = directory / f".tokenizer.{id(fast)}.tmp"
    fast.save_pretrained(tmp)
    for item in tmp.iterdir():
        item.replace(directory / item.name)
    tmp.rmdir()


def load_unsloth(
    source: str, *, dtype, grad_ckpt: bool, lora_rank: int, lora_alpha: int, lora_dropout: float
):
    """Unsloth's own load (NF4, its patches) and LoRA on the seven projections it targets."""
    from unsloth import FastLanguageModel

    config = json.loads((Path(source) / "config.json").read_text())
    ensure_tokenizer(Path(source), config.get("vocab_size", 1000))
    model, _ = FastLanguageModel.from_pretrained(
        model_name=source,
        max_seq_length=min(config.get("max_position_embeddings", 4096), 32768),
        dtype=dtype,
        load_in_4bit=True,
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        bias="none",
        use_gradient_checkpointing="unsloth" if grad_ckpt else False,
        random_state=0,
    )
    FastLanguageModel.for_training(model)
    return model
