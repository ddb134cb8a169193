"""One QLoRA trial, run inside a worker process: the step users run, measured.

NF4 base with double quant -> prepare_model_for_kbit_training -> LoRA on all linear layers ->
train mode (from_pretrained returns eval mode, and gradient checkpointing is a silent no-op
there) -> one short forward and backward (_warm_up) -> free all but the model (gc + empty_cache,
as Trainer does before training) -> warm-up steps -> timed steps with device synchronisation.
fp16 runs autocast with a GradScaler, bf16 plain autocast, as transformers' Trainer does through
accelerate.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.paths import cache_dir
from bench.schema import GIB
from bench.spec import model_key

# fp32 (no autocast) is for sft (--dtype fp32, its CPU default); sweep grids take fp16/bf16 only.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def random_weights_dir(name: str, config: dict, build_device: str) -> Path:
    """A checkpoint of the architecture with random weights, built once and cached on disk."""
    from transformers import AutoConfig, AutoModelForCausalLM

    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_dir() / "random-weights" / f"{name}-{digest}"
    if (final / "config.json").exists():
        return final
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
    except OSError:  # another process finished the same checkpoint first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class MemoryProbe:
    """torch allocator peaks per phase, NVML process/device memory, CPU peak RSS."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.nvml = None
        self.nvml_process_max = None
        self.nvml_device_max = None
        if self.cuda:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            except Exception:
                self.nvml = None
        _reset_peak_rss()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def now(self) -> tuple[float | None, float | None]:
        if not self.cuda:
            return None, None
        return torch.cuda.memory_allocated() / GIB, torch.cuda.memory_reserved() / GIB

    def peak(self) -> tuple[float | None, float | None]:
        if not self.cuda:
            return None, None
        return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB

    def sample_nvml(self):
        if self.nvml is None:
            return
        try:
            used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / GIB
            self.nvml_device_max = max(self.nvml_device_max or 0.0, used)
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    mine = proc.usedGpuMemory / GIB
                    self.nvml_process_max = max(self.nvml_process_max or 0.0, mine)
        except Exception:
            pass


def _reset_peak_rss():
    try:  # Linux >= 4.0: writing 5 resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _sdpa_context(backends: list[str], device: str):
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


def _optimizer(name: str, params):
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=2e-4)
    return torch.optim.AdamW(params, lr=2e-4)


def load_qlora_model(spec: dict, source: str, device: str):
    """NF4 double-quant base + prepare_model_for_kbit_training + LoRA, in train mode."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = DTYPES[spec["dtype"]]
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    device_map = {"": torch.cuda.current_device()} if device == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(
        source,
        quantization_config=quant,
        dtype=dtype,
        device_map=device_map,
        attn_implementation="sdpa",
        local_files_only=True,
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=spec["grad_ckpt"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    targets = spec["target_modules"]
    lora = LoraConfig(
        r=spec["lora_rank"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else targets.split(","),
    )
    model = get_peft_model(model, lora)
    model.train()
    return model


def measure(spec: dict, plan: dict, model_source: dict, row: dict, slot: ModelSlot | None = None) -> dict:
    """Run the trial, filling `row` as phases complete (so an OOM row keeps what was measured
    before it). The SDPA restriction covers forward, backward and checkpoint recomputation.
    The model comes from `slot` when it holds this trial's (kept from the worker's last trial)
    and stays there: the caller drops it, or restores it for the next trial."""
    slot = slot or ModelSlot()
    with _sdpa_context(plan["sdpa_backends"], plan["device"]):
        _measure(spec, plan, model_source, row, slot)
    return row


def allocator_state(device: str) -> list | None:
    """The caching allocator's segments with their blocks (address, size, state). Two equal
    states answer the same allocation requests the same way. None off CUDA."""
    if device != "cuda":
        return None
    return [
        (
            seg["address"],
            seg["total_size"],
            seg["stream"],
            seg.get("segment_type"),
            [(block.get("address"), block["size"], block["state"]) for block in seg["blocks"]],
        )
        for seg in torch.cuda.memory_snapshot()
    ]


class ModelSlot:
    """The model a worker holds for its next trial, and the allocator state it starts from.

    Loading and quantising is most of a short trial's cost, so a worker keeps its model for the
    next trial of the same model, but only when `restore` brings the caching allocator back to
    the state the load left, segment for segment and block for block: then nothing left from
    the earlier trial (a fit or an OOM) can change what the next one measures. (Kept without
    that check, a model reused after a fitting trial peaked up to 0.25 GiB reserved away from a
    fresh load: the earlier trial's cached segments were still there.) A worker loads one model
    in its life: one that loaded a second model after dropping the first, into an emptied
    allocator, still ended that load with one 2 MiB segment more than a new process (H200,
    Llama-3.2-1B then Qwen2.5-0.5B), so another model means another worker.
    """

    def __init__(self):
        self.key: str | None = None
        self.model = None
        self.load: dict = {}
        self.baseline: list | None = None  # allocator_state() a trial starts from
        self.preloaded = False  # loaded ahead of its first trial, which has not run yet

    def drop(self, device: str) -> None:
        self.key, self.model, self.load, self.baseline, self.preloaded = None, None, {}, None, False
        free_memory(device)

    def release(self, device: str, collect: bool = True) -> None:
        """Free the gradients, cuBLAS's workspaces (kept per handle in the allocator) and every
        cached block: what is left is the model."""
        for param in self.model.parameters():
            param.grad = None
        if collect:
            gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:
                clear()
            torch.cuda.empty_cache()

    def restore(self, device: str) -> bool:
        """After a trial: True when the allocator is back in the state the load left (then the
        model can serve another trial as if just loaded)."""
        if self.model is None:
            return False
        for collect in (False, True):  # a garbage collection only when plain freeing fell short
            self.release(device, collect)
            if allocator_state(device) == self.baseline:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                return True
        return False


WARM_TOKENS = 64


def _warm_up(model, spec: dict, device: str) -> None:
    """One short forward and backward, which every trial's model gets right after its load.
    It does once what a model's first step does besides the step itself: CUDA loads kernels
    and libraries, and bitsandbytes casts each quantised layer's bias to the compute dtype, in
    place, for good (Qwen2's q/k/v projections have biases); without it, a model that served a
    trial would start the next one from another allocator state than a fresh load. It consumes
    no random numbers of the trial's."""
    rng = torch.random.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None
    tokens = torch.zeros((1, WARM_TOKENS), dtype=torch.long, device=device)
    with torch.autocast(device_type=device, dtype=DTYPES[spec["dtype"]]):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.random.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1])


def load_into(slot: ModelSlot, spec: dict, plan: dict, model_source: dict, probe: MemoryProbe) -> None:
    """Load (quantise, wrap) under the allocator cap into `slot`, recording the load's memory;
    warm it up (_warm_up); then free all but the model, as transformers' Trainer does before its
    first step (accelerator.free_memory(): gc.collect and torch.cuda.empty_cache)."""
    device = plan["device"]
    slot.drop(device)
    if model_source.get("path"):
        source = model_source["path"]
    else:
        source = str(random_weights_dir(spec["model"], model_source["config"], device))
    if device == "cuda":
        apply_cap(plan["cap_gib"])
        probe.reset_peak()
    t0 = time.perf_counter()
    model = load_qlora_model(spec, source, device)
    assert model.training, "model must be in train mode for gradient checkpointing to act"
    probe.sync()
    load_s, peak = time.perf_counter() - t0, probe.peak()
    slot.key, slot.model = model_key(spec, plan, model_source), model
    _warm_up(model, spec, device)
    slot.release(device)
    slot.load = {"load_s": load_s, "now": probe.now(), "peak": peak}
    slot.baseline = allocator_state(device)


def preload(spec: dict, plan: dict, model_source: dict, slot: ModelSlot) -> None:
    """Load `spec`'s model into `slot` before its first trial arrives (a spare does this while
    another worker's trials run), exactly as that trial would have: the same device settings,
    SDPA kernels, cap, load, warm-up and free. The trial then starts from the allocator state a
    load leaves, as if it had loaded the model itself."""
    with _sdpa_context(plan["sdpa_backends"], plan["device"]):
        _prepare_device(plan)
        load_into(slot, spec, plan, model_source, MemoryProbe(plan["device"]))
    slot.preloaded = True


def _prepare_device(plan: dict) -> None:
    if plan.get("threads"):
        torch.set_num_threads(plan["threads"])
    if plan["device"] == "cuda":
        apply_cap(None)
        torch.backends.cuda.matmul.allow_tf32 = plan["allow_tf32"]
        torch.backends.cudnn.allow_tf32 = plan["allow_tf32"]


def _measure(spec: dict, plan: dict, model_source: dict, row: dict, slot: ModelSlot) -> dict:
    device = plan["device"]
    started = time.perf_counter()
    _prepare_device(plan)
    probe = MemoryProbe(device)
    if slot.key == model_key(spec, plan, model_source):  # kept from the last trial, or preloaded
        row["model_load"] = "preloaded" if slot.preloaded else "reused"
        slot.preloaded = False
        if device == "cuda":
            apply_cap(plan["cap_gib"])
    else:
        load_into(slot, spec, plan, model_source, probe)
        row["model_load"] = "loaded"
    row["load_s"] = slot.load["load_s"]
    model = slot.model
    trainable, total_params = model.get_nb_trainable_parameters()
    row.update(trainable_params=trainable, total_params=total_params)
    row["load_alloc_gib"], row["load_reserved_gib"] = slot.load["now"]
    load_peak = slot.load["peak"]
    probe.sample_nvml()

    if spec.get("inject") == "nan":  # test hook (worker QLORA_BENCH_INJECT); the model dies with the trial
        model.get_input_embeddings().register_forward_hook(lambda m, i, out: out * float("inf"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(spec["optimizer"], params)
    dtype = DTYPES[spec["dtype"]]
    scaler = torch.amp.GradScaler(device, enabled=spec["dtype"] == "fp16")
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1234)
    tokens = torch.randint(0, vocab, (spec["batch_size"], spec["seq_len"]), generator=gen).to(device)

    def step() -> float:
        with torch.autocast(device_type=device, dtype=dtype):
            loss = model(input_ids=tokens, labels=tokens).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().float().item()

    losses = []
    probe.reset_peak()
    warm_started = time.perf_counter()
    losses.append(step())
    probe.sync()
    first_peak = probe.peak()
    row["first_step_peak_alloc_gib"], row["first_step_peak_reserved_gib"] = first_peak
    probe.sample_nvml()
    warm_peak = first_peak
    for _ in range(spec["warmup_steps"] - 1):
        losses.append(step())
        probe.sample_nvml()
    probe.sync()
    row["warmup_s"] = time.perf_counter() - warm_started
    if spec["warmup_steps"] > 1:
        warm_peak = probe.peak()

    times = []
    probe.reset_peak()
    for _ in range(spec["measured_steps"]):
        probe.sync()
        t0 = time.perf_counter()
        losses.append(step())
        probe.sync()
        times.append(time.perf_counter() - t0)
        probe.sample_nvml()
    steady = probe.peak()
    row["steady_peak_alloc_gib"], row["steady_peak_reserved_gib"] = steady
    if device == "cuda":
        row["peak_alloc_gib"] = max(p[0] for p in (load_peak, first_peak, warm_peak, steady))
        row["peak_reserved_gib"] = max(p[1] for p in (load_peak, first_peak, warm_peak, steady))
    row["nvml_process_max_gib"] = probe.nvml_process_max
    row["nvml_device_used_max_gib"] = probe.nvml_device_max
    row["cpu_peak_rss_gib"] = peak_rss_gib()

    bad = [i for i, v in enumerate(losses) if v != v or v in (float("inf"), float("-inf"))]
    p50 = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    row.update(
        step_time_p50_s=p50,
        step_time_p90_s=p90,
        tokens_per_s=spec["batch_size"] * spec["seq_len"] / p50,
        step_times_s=";".join(f"{t:.5f}" for t in times),
        loss_first=losses[0],
        loss_last=losses[-1],
        trial_wall_s=time.perf_counter() - started,
    )
    if bad:  # not a valid run: its step times are no throughput
        row["status"] = "error"
        row["reason"] = f"non-finite loss at step {bad[0] + 1} ({losses[bad[0]]}); throughput not valid"
        row.update(tokens_per_s=None, step_time_p50_s=None, step_time_p90_s=None)
    else:
        row["status"] = "ok"
        row["reason"] = ""
    return row


def free_memory(device: str) -> None:
    """Drop unreferenced tensors and hand cached blocks back, so the next phase starts clean."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def apply_cap(cap_gib: float | None) -> None:
    """Cap PyTorch's caching allocator (reserved memory) at `cap_gib`; None lifts the cap."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap_gib * GIB / total if cap_gib else 1.0)


def cleanup(device: str) -> None:
    free_memory(device)
    if device == "cuda":
        apply_cap(None)


RANDOM_WEIGHTS_NOTE = (
    "random weights have no format success (they cannot follow instructions): "
    "pass --weights with a real model"
)


def run_sft_workload(spec: dict, plan: dict, model_source: dict, row: dict) -> None:
    """After the step measurement: a short QLoRA SFT on the extraction task under the same cap and
    kernels, then format success on held-out prompts. workload = "sft:STEPS:LR:SAMPLES"."""
    if not model_source.get("path"):
        row["format_note"] = RANDOM_WEIGHTS_NOTE
        return
    import tempfile

    from bench.extraction import data, sft

    _, steps, lr, samples = spec["workload"].split(":")
    splits = data.generate(2000, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sft.SFTConfig(
            source=model_source["path"],
            out=Path(tmp),
            device=plan["device"],
            dtype=spec["dtype"],
            lora_rank=spec["lora_rank"],
            lora_alpha=spec["lora_alpha"],
            lora_dropout=spec["lora_dropout"],
            grad_ckpt=spec["grad_ckpt"],
            lr=float(lr),
            batch_size=spec["batch_size"],
            max_steps=int(steps),
            eval_every=int(steps),
            eval_samples=int(samples),
            max_len=spec["seq_len"],
        )
        try:
            result = sft.train(cfg, splits, plan, log=lambda *args, **kwargs: None)
        except BaseException as exc:
            row["format_note"] = f"the sft workload failed: {type(exc).__name__}"
            raise
    row.update(
        format_success=result["after"],
        field_accuracy=result["field_accuracy"],
        format_note=f"after {steps} SFT steps at lr {lr} on {samples} held-out prompts; "
        f"{result['before']:.2f} before",
    )
