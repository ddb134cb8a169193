"""One QLoRA trial, run inside a worker process: the step users run, measured.

The model (bench.qlora) -> one short forward and backward (_warm_up) -> free all but the model
(gc + empty_cache, as Trainer does before training) -> warm-up steps -> timed steps with device
synchronisation. fp16 runs autocast with a GradScaler, bf16 plain autocast, as transformers'
Trainer does through accelerate.
"""

from __future__ import annotations

import gc
import time

import torch

from bench.batches import BackendProbe, make_batch, measured_batches, real_tokens
from bench.evaluation import evaluating, generate, timed_pass
from bench.memory import MemoryProbe, allocator_state, record_peaks, step_time_columns
from bench.messages import TrialRequest
from bench.qlora import (
    DTYPES,
    apply_cap,
    free_memory,
    load_qlora_model,
    random_weights_dir,
    sdpa_context,
    set_allocator,
)


def _optimizer(name: str, params):
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=2e-4)
    return torch.optim.AdamW(params, lr=2e-4)


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


def _warm_up(model, dtype: str, device: str) -> None:
    """One short forward and backward, which every trial's model gets right after its load.
    It does once what a model's first step does besides the step itself: CUDA loads kernels
    and libraries, and bitsandbytes casts each quantised layer's bias to the compute dtype, in
    place, for good (Qwen2's q/k/v projections have biases); without it, a model that served a
    trial would start the next one from another allocator state than a fresh load. It consumes
    no random numbers of the trial's."""
    rng = torch.random.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None
    tokens = torch.zeros((1, WARM_TOKENS), dtype=torch.long, device=device)
    with torch.autocast(device_type=device, dtype=DTYPES[dtype]):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.random.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1])


def load_into(slot: ModelSlot, request: TrialRequest, probe: MemoryProbe) -> None:
    """Load (quantise, wrap) under the allocator cap into `slot`, recording the load's memory;
    warm it up (_warm_up); then free all but the model, as transformers' Trainer does before its
    first step (accelerator.free_memory(): gc.collect and torch.cuda.empty_cache)."""
    spec, plan, device = request.spec, request.plan, request.plan.device
    slot.drop(device)
    source = request.source.path or str(random_weights_dir(spec.model, request.source.config, device))
    if device == "cuda":
        set_allocator(spec.allocator)
        apply_cap(plan.cap_gib)
        probe.reset_peak()
    t0 = time.perf_counter()
    model = load_qlora_model(
        source,
        device,
        dtype=spec.dtype,
        grad_ckpt=spec.grad_ckpt,
        lora_rank=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.target_modules,
        recipe=spec.recipe,
    )
    assert model.training, "model must be in train mode for gradient checkpointing to act"
    probe.sync()
    load_s, peak = time.perf_counter() - t0, probe.peak()
    slot.key, slot.model = request.model, model
    _warm_up(model, spec.dtype, device)
    slot.release(device)
    slot.load = {"load_s": load_s, "now": probe.now(), "peak": peak}
    slot.baseline = allocator_state(device)


def preload(request: TrialRequest, slot: ModelSlot) -> None:
    """Load a trial's model into `slot` before the trial arrives (a spare does this while
    another worker's trials run), exactly as that trial would have: the same device settings,
    SDPA kernels, cap, load, warm-up and free. The trial then starts from the allocator state a
    load leaves, as if it had loaded the model itself."""
    plan = request.plan
    if request.spec.recipe == "trl":  # SFTTrainer prepares its model itself, in the trial
        return
    with sdpa_context(plan.sdpa_backends, plan.device):
        _prepare_device(plan)
        load_into(slot, request, MemoryProbe(plan.device))
    slot.preloaded = True


def _prepare_device(plan) -> None:
    if plan.threads:
        torch.set_num_threads(plan.threads)
    if plan.device == "cuda":
        apply_cap(None)
        torch.backends.cuda.matmul.allow_tf32 = plan.allow_tf32
        torch.backends.cudnn.allow_tf32 = plan.allow_tf32


def measure(request: TrialRequest, row: dict, slot: ModelSlot | None = None, inject: str = "") -> dict:
    """Run the trial, filling `row` as phases complete (so an OOM row keeps what was measured
    before it). The SDPA restriction covers forward, backward and checkpoint recomputation.
    The model comes from `slot` when it holds this trial's (kept from the worker's last trial,
    or preloaded) and stays there: the caller drops it, or restores it for the next trial.
    `inject` "nan" (test hook) makes the embeddings output inf."""
    slot = slot or ModelSlot()
    with sdpa_context(request.plan.sdpa_backends, request.plan.device):
        if request.spec.recipe == "trl":  # TRL's own trainer loop; no model kept
            from bench.trl_run import measure_trl

            slot.drop(request.plan.device)
            _prepare_device(request.plan)
            return measure_trl(request, row)
        _measure(request, row, slot, inject)
    return row


def training_step(model, spec, device: str):
    """The trial's training step on `model` (its optimizer, GradScaler and batches made here):
    (step, the warm-up batch, the measured steps' batches). step(batch) returns the loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(spec.optimizer, params)
    dtype = DTYPES[spec.dtype]
    scaler = torch.amp.GradScaler(device, enabled=spec.dtype == "fp16")
    batch = make_batch(spec.padding, spec.batch_size, spec.seq_len, model.config.vocab_size, device)
    measured = measured_batches(spec, model.config.vocab_size, device) or [batch] * spec.measured_steps

    def step(batch=batch) -> float:
        with torch.autocast(device_type=device, dtype=dtype):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().float().item()

    return step, batch, measured


def _measure(request: TrialRequest, row: dict, slot: ModelSlot, inject: str) -> dict:
    spec, plan = request.spec, request.plan
    device = plan.device
    started = time.perf_counter()
    _prepare_device(plan)
    probe = MemoryProbe(device)
    if slot.key == request.model:  # kept from the last trial, or preloaded
        row["model_load"] = "preloaded" if slot.preloaded else "reused"
        slot.preloaded = False
        if device == "cuda":
            apply_cap(plan.cap_gib)
    else:
        load_into(slot, request, probe)
        row["model_load"] = "loaded"
    row["load_s"] = slot.load["load_s"]
    model = slot.model
    trainable, total_params = model.get_nb_trainable_parameters()
    row.update(trainable_params=trainable, total_params=total_params)
    row["load_alloc_gib"], row["load_reserved_gib"] = slot.load["now"]
    load_peak = slot.load["peak"]
    probe.sample_nvml()

    if inject == "nan":  # test hook (bench.faults); the model dies with the trial
        model.get_input_embeddings().register_forward_hook(lambda m, i, out: out * float("inf"))
    step, batch, measured = training_step(model, spec, device)
    losses = []
    probe.reset_peak()
    warm_started = time.perf_counter()
    with BackendProbe() as backends:  # operator names only: no device memory, no effect on peaks
        losses.append(step())
    row["sdpa_backend_used"] = backends.used
    probe.sync()
    first_peak = probe.peak()
    row["first_step_peak_alloc_gib"], row["first_step_peak_reserved_gib"] = first_peak
    probe.sample_nvml()
    warm_peak = first_peak
    for _ in range(spec.warmup_steps - 1):
        losses.append(step())
        probe.sample_nvml()
    probe.sync()
    row["warmup_s"] = time.perf_counter() - warm_started
    if spec.warmup_steps > 1:
        warm_peak = probe.peak()

    times = []
    probe.reset_peak()
    for one in measured:
        probe.sync()
        t0 = time.perf_counter()
        losses.append(step(one))
        probe.sync()
        times.append(time.perf_counter() - t0)
        probe.sample_nvml()
    steady = probe.peak()
    row["steady_peak_alloc_gib"], row["steady_peak_reserved_gib"] = steady
    peaks = [load_peak, first_peak, warm_peak, steady]
    if spec.eval_batch_size:
        peaks += _evaluate(model, spec, device, probe, row)
    record_peaks(row, probe, peaks, device)

    bad = [i for i, v in enumerate(losses) if v != v or v in (float("inf"), float("-inf"))]
    row.update(
        **step_time_columns(
            times, real_tokens(batch) if spec.lengths == "fixed" else [real_tokens(b) for b in measured]
        ),
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


def _evaluate(model, spec, device: str, probe: MemoryProbe, row: dict) -> list[tuple]:
    """An evaluation forward as Trainer's evaluation loop runs it (eval mode, no gradients, the
    loss over labels, the logits kept), then, when asked for, the generation pass: their peaks
    in their own columns. An OOM here is the trial's OOM, its reason saying so."""
    batch = make_batch(
        spec.padding, spec.eval_batch_size, spec.seq_len, model.config.vocab_size, device, seed=99
    )
    peaks: list[tuple] = []
    with timed_pass(probe, row, "eval", peaks), evaluating(model, spec, device):
        model(**batch).loss.float().item()
    if spec.eval_new_tokens:
        generate(model, spec, device, probe, row, peaks)
    return peaks
