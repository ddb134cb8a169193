"""QLoRA SFT on the JSON-extraction task, with format success measured before, during and after.

Loss is on the completion tokens only. Evaluation is inference-only, batch 1, greedy, with a cap
on new tokens, and frees memory around it (evaluation is where small cards run out). A
checkpoint (adapter, optimizer, scaler, step, curves) is saved before each evaluation, and a run
resumes from its last one.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.emulation import Plan
from bench.errors import BenchUsageError
from bench.extraction import metric
from bench.extraction.curves import WandbCurves, read_curves, write_before_after, write_curves
from bench.extraction.data import SCHEMAS
from bench.qlora import (
    DTYPES,
    apply_cap,
    free_memory,
    load_qlora_model,
    restore_cpu_4bit_layout,
    sdpa_context,
)


@dataclass(frozen=True)
class SFTConfig:
    source: str  # model directory (weights + tokenizer)
    out: Path  # run directory
    device: str = "cpu"
    dtype: str = "bf16"  # the 4-bit base's compute dtype and autocast's; fp32: no autocast
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    grad_ckpt: bool = False
    lr: float = 2e-4
    batch_size: int = 8
    max_steps: int = 300
    eval_every: int = 100
    eval_samples: int = 50
    max_new_tokens: int = 64
    max_len: int = 256
    seed: int = 0
    wandb: bool = False  # also log the curves to W&B (offline unless WANDB_MODE says otherwise)
    dataset_size: int = 2000  # examples generated (the data split depends on it and the seed)


# What a resumed run must share with the run it resumes (the CLI option that sets it): changing
# any of these would continue a run under settings it did not start with. --steps and
# --eval-every may change (a run is extended, or evaluated more often).
RESUME_FIXED = {
    "source": "--weights",
    "device": "--device",
    "dtype": "--dtype",
    "lora_rank": "--rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "grad_ckpt": "--grad-ckpt",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "eval_samples": "--eval-samples",
    "max_new_tokens": "--max-new-tokens",
    "max_len": "max_len",
    "seed": "--seed",
    "dataset_size": "--dataset-size",
}


def check_resume(cfg: SFTConfig) -> None:
    """Refuse to resume a run in `cfg.out` under other settings than it started with (before
    anything in it is written)."""
    saved = cfg.out / "config.json"
    if not (cfg.out / "checkpoint" / "state.pt").exists() or not saved.exists():
        return
    try:
        old = json.loads(saved.read_text())
    except (OSError, ValueError) as exc:
        raise BenchUsageError(f"{saved}: unreadable ({exc}); --fresh starts the run over") from exc
    now = json.loads(json.dumps({**asdict(cfg), "out": str(cfg.out)}))
    diffs = [
        f"{flag} {old.get(name)!r} then, {now[name]!r} now"
        for name, flag in RESUME_FIXED.items()
        if old.get(name) != now[name]
    ]
    if diffs:
        raise BenchUsageError(
            f"{cfg.out} holds a run started with other settings ({'; '.join(diffs)}); it would resume "
            "as if it had run under these. Give its settings again, another --out, or --fresh to start over"
        )


def _autocast(device: str, dtype):
    """Autocast to fp16/bf16; fp32 runs without it (CPU autocast takes no fp32)."""
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)


def _prompt_text(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return f"{prompt}\nJSON: "


def encode(tokenizer, row: dict, max_len: int) -> tuple[list[int], list[int]]:
    """input ids and labels, the prompt masked out (-100): loss on the completion only."""
    prompt_ids = tokenizer(_prompt_text(tokenizer, row["prompt"]), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([-100] * len(prompt_ids) + answer_ids)[:max_len]
    return ids, labels


def _batch(tokenizer, rows, max_len, device):
    pairs = [encode(tokenizer, r, max_len) for r in rows]
    width = max(len(ids) for ids, _ in pairs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in pairs], device=device)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs], device=device)
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in pairs], device=device)
    return ids, labels, mask


@torch.no_grad()
def generate_one(model, tokenizer, prompt: str, cfg: SFTConfig) -> str:
    ids = tokenizer(_prompt_text(tokenizer, prompt), return_tensors="pt")["input_ids"].to(cfg.device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def evaluate(model, tokenizer, rows: list[dict], eval_rows: list[dict], cfg: SFTConfig, dtype):
    """Format success and field accuracy on held-out prompts, and eval loss; memory freed around."""
    model.eval()
    free_memory(cfg.device)
    outputs, scores = [], []
    with _autocast(cfg.device, dtype):
        for row in rows:
            text = generate_one(model, tokenizer, row["prompt"], cfg)
            outputs.append(text)
            scores.append(metric.score(text, json.loads(row["answer"]), SCHEMAS[row["schema"]]))
        losses = []
        for i in range(0, len(eval_rows), cfg.batch_size):
            ids, labels, mask = _batch(tokenizer, eval_rows[i : i + cfg.batch_size], cfg.max_len, cfg.device)
            with torch.no_grad():
                losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.float().item())
    free_memory(cfg.device)
    restore_cpu_4bit_layout(model)  # else training after this evaluation loses its gradients
    model.train()
    summary = metric.summarize(scores)
    summary["eval_loss"] = sum(losses) / len(losses) if losses else None
    return summary, outputs


def train(cfg: SFTConfig, splits: dict, plan: Plan | None = None, log=print) -> dict:
    """Train with the profile's emulation plan (allocator cap, SDPA kernels) applied."""
    if cfg.device == "cuda" and plan is not None and plan.cap_gib:
        apply_cap(plan.cap_gib)
    with sdpa_context(plan.sdpa_backends if plan is not None else (), cfg.device):
        return _train(cfg, splits, log)


def _train(cfg: SFTConfig, splits: dict, log) -> dict:
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(json.dumps({**asdict(cfg), "out": str(cfg.out)}, indent=1))
    tokenizer = AutoTokenizer.from_pretrained(cfg.source, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)  # LoRA initialisation and dropout: a run is reproducible
    model = load_qlora_model(
        cfg.source,
        cfg.device,
        dtype=cfg.dtype,
        grad_ckpt=cfg.grad_ckpt,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
    )
    dtype = DTYPES[cfg.dtype]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    warmup = max(1, cfg.max_steps // 20)  # transformers' Trainer default: linear decay after warm-up
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (cfg.max_steps - s) / (cfg.max_steps - warmup)))
    )
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.dtype == "fp16")
    test = splits["test"][: cfg.eval_samples]
    held = splits["eval"][: max(cfg.batch_size, cfg.eval_samples)]
    curves_path, ckpt = cfg.out / "curves.csv", cfg.out / "checkpoint"
    curves, step, before = read_curves(curves_path), 0, None
    mirror = WandbCurves(cfg, log)
    if (ckpt / "state.pt").exists():  # resume
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = torch.load(ckpt / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, before = state["step"], state["before"]
        curves = [c for c in curves if int(c["step"]) <= step]
        log(f"resumed at step {step}")
    rng = random.Random(cfg.seed + step)
    started = time.perf_counter()
    if step == 0:
        summary, before = evaluate(model, tokenizer, test, held, cfg, dtype)
        curves.append({"step": 0, **summary, "n_eval": summary["n"], "elapsed_s": 0.0})
        write_curves(curves_path, curves)
        mirror(curves[-1])
        log(f"step 0: format success {summary['format_success']:.2f}")
    window, after = [], None
    while step < cfg.max_steps:
        rows = rng.sample(splits["train"], cfg.batch_size)
        ids, labels, mask = _batch(tokenizer, rows, cfg.max_len, cfg.device)
        with _autocast(cfg.device, dtype):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.append(loss.detach().float().item())
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            _save(model, optimizer, schedule, scaler, step, before, ckpt)  # before evaluating
            summary, after = evaluate(model, tokenizer, test, held, cfg, dtype)
            curves.append(
                {
                    "step": step,
                    "train_loss": sum(window) / len(window),
                    **summary,
                    "n_eval": summary["n"],
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            )
            window = []
            write_curves(curves_path, curves)
            mirror(curves[-1])
            log(
                f"step {step}: train loss {curves[-1]['train_loss']:.3f}, "
                f"format success {summary['format_success']:.2f}"
            )
    mirror.finish()
    if after is not None:  # a run resumed after its last step has nothing new to write
        write_before_after(cfg.out / "before_after.jsonl", test, before, after)
    return {
        "before": float(curves[0]["format_success"]),
        "after": float(curves[-1]["format_success"]),
        "field_accuracy": float(curves[-1]["field_accuracy"]),
        "curves": curves_path,
    }


def _save(model, optimizer, schedule, scaler, step, before, ckpt: Path) -> None:
    tmp = ckpt.with_name("checkpoint.tmp")
    model.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "before": before,
        },
        tmp / "state.pt",
    )
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    tmp.rename(ckpt)
