"""The QLoRA model as people build it, and the device settings it runs under.

NF4 double-quant base -> the recipe's preparation (peft's prepare_model_for_kbit_training, or a
hand-written loop's checkpointing alone) -> LoRA on all linear layers -> train mode
(from_pretrained returns eval mode, and gradient checkpointing is a silent no-op there).
Shared by the trial (bench.trial) and the SFT workload (bench.extraction.sft).
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from bench.paths import cache_dir
from bench.schema import GIB

# fp32 (no autocast) is for sft (--dtype fp32, its CPU default); sweep grids take fp16/bf16 only.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


@contextmanager
def evaluation_oom(eval_batch_size: int):
    """An OOM in an evaluation pass is the trial's OOM, its reason saying where it happened."""
    try:
        yield
    except Exception as exc:
        if is_oom(exc):
            raise torch.OutOfMemoryError(f"in evaluation (eval batch {eval_batch_size}): {exc}") from None
        raise


def random_weights_dir(name: str, config: dict, build_device: str) -> Path:
    """A checkpoint of the architecture with random weights, built once and cached on disk."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_dir() / "random-weights" / f"{name}-{digest}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # one build per checkpoint: runs started together on one host wait for the first (boundary
    # runs started together each wrote a temporary copy, Qwen2.5-7B's 15 GB, and filled a 64 GiB disk)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "config.json").exists():
            _build(final, config, build_device)
    return final


def _build(final: Path, config: dict, build_device: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(0)
    with torch.device(build_device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(tmp)
    del model
    if build_device == "cuda":
        torch.cuda.empty_cache()
    try:
        tmp.rename(final)
    except OSError:  # another process (without the lock: an older version) finished it first
        shutil.rmtree(tmp, ignore_errors=True)


def load_qlora_model(
    source: str,
    device: str,
    *,
    dtype: str,
    grad_ckpt: bool,
    lora_rank: int,
    lora_alpha: int,
    lora_dropout: float,
    target_modules: str = "all-linear",
    recipe: str = "peft",
):
    """NF4 double-quant base + LoRA, in train mode, prepared as the recipe does it: `peft` with
    prepare_model_for_kbit_training (which casts every parameter that is not 4-bit, embeddings
    and LM head included, to fp32, and enables checkpointing), `loop` as hand-written small-GPU
    scripts do (the same checkpointing, parameters left in the compute dtype), `liger` as peft
    with Liger Kernel patched in, `unsloth` by Unsloth's own loader (bench.recipes)."""
    compute = DTYPES[dtype]
    if recipe == "unsloth":
        from bench.recipes import load_unsloth

        return load_unsloth(
            source,
            dtype=compute,
            grad_ckpt=grad_ckpt,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
        )
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_4bit(source, device, compute)
    model.config.use_cache = False
    checkpointing = {"use_reentrant": False}
    if recipe == "liger":
        from bench.recipes import apply_liger

        apply_liger(model)
    if recipe in ("peft", "liger"):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=grad_ckpt, gradient_checkpointing_kwargs=checkpointing
        )
    elif grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    model = get_peft_model(model, lora_config(lora_rank, lora_alpha, lora_dropout, target_modules))
    model.train()
    return model


def load_4bit(source: str, device: str, compute):
    """The NF4 double-quant base in the compute dtype, SDPA attention, as every recipe but
    unsloth loads it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    device_map = {"": torch.cuda.current_device()} if device == "cuda" else {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(
        source,
        quantization_config=quant,
        dtype=compute,
        device_map=device_map,
        attn_implementation="sdpa",
        local_files_only=True,
    )


def lora_config(lora_rank: int, lora_alpha: int, lora_dropout: float, target_modules: str):
    from peft import LoraConfig

    return LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        task_type="CAUSAL_LM",
        target_modules=target_modules if target_modules == "all-linear" else target_modules.split(","),
    )


def sdpa_context(backends, device: str):
    """Allow only these SDPA kernels (the emulated card's) on CUDA."""
    if device != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "flash": "FLASH_ATTENTION",
        "efficient": "EFFICIENT_ATTENTION",
        "math": "MATH",
        "cudnn": "CUDNN_ATTENTION",
    }
    return sdpa_kernel([getattr(SDPBackend, names[b]) for b in backends])


def free_memory(device: str) -> None:
    """Drop unreferenced tensors and hand cached blocks back, so the next phase starts clean."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def restore_cpu_4bit_layout(model) -> int:
    """Undo bitsandbytes' CPU repacking of 4-bit weights; returns how many layers it undid.

    bitsandbytes 0.50 repacks a Linear4bit's weight for its AVX512-BF16 CPU kernel the first time
    the layer runs in eval mode on a CPU input without gradients (an evaluation, a generation),
    and keeps it so. Back in train mode, matmul_4bit then takes that kernel, which has no
    backward ("bitsandbytes::gemv_4bit: an autograd kernel was not registered"): the gradient
    through every frozen 4-bit layer is lost, and a model trained after an evaluation barely
    learns (measured: SmolLM2-135M's loss 1.07 -> 0.14 in 12 steps without a generation first,
    -> 0.79 with one). Called after every CPU evaluation, before training goes on."""
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # a bitsandbytes without the CPU packing
        return 0
    undone = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            undone += 1
    return undone


def set_allocator(allocator: str) -> None:
    """PYTORCH_CUDA_ALLOC_CONF's expandable_segments, set in the process before its model loads
    (a worker loads one model in its life, so no segment of the other kind exists yet)."""
    if allocator == "expandable":
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")


def apply_cap(cap_gib: float | None) -> None:
    """Cap PyTorch's caching allocator (reserved memory) at `cap_gib`; None lifts the cap."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap_gib * GIB / total if cap_gib else 1.0)


def cleanup(device: str) -> None:
    free_memory(device)
    if device == "cuda":
        apply_cap(None)
