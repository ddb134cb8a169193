"""The trl recipe: TRL's SFTTrainer prepares the 4-bit model (its LoRA wrapping, its casts) and
runs its own train(): its collator, loss, optimizer and mixed precision through accelerate. A
callback reads the memory and the step times around each of its steps, as bench.trial does
around its own.

The dataset is the trial's batch (bench.batches) as tokenized rows, one epoch per step, so
every step sees the same padded shape. The loss is over every token (no prompt/completion
split: the memory and time of the two are the same).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.batches import BackendProbe, make_batch, measured_batches, real_tokens, sequences
from bench.evaluation import generate, timed_pass
from bench.memory import MemoryProbe, record_peaks, step_time_columns
from bench.qlora import (
    DTYPES,
    apply_cap,
    evaluation_oom,
    free_memory,
    load_4bit,
    lora_config,
    random_weights_dir,
    set_allocator,
)
from bench.recipes import ensure_tokenizer


def _rows(*batches: dict) -> list[dict]:
    """The batches' sequences as dataset rows (TRL's collator pads or packs them again)."""
    return [{"input_ids": ids} for batch in batches for ids in sequences(batch)]


def _epoch_mean(batch: dict, measured: list[dict], times: list[float]) -> list[int]:
    """Real tokens per measured step with drawn lengths: the trainer shuffles the rows into its
    own batches, so each step is credited the mean over the epoch's batches."""
    tokens = [real_tokens(b) for b in (batch, *measured)]
    return [round(sum(tokens) / len(tokens))] * len(times)


def measure_trl(request, row: dict) -> dict:
    from datasets import Dataset, disable_progress_bars
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    spec, plan = request.spec, request.plan
    device = plan.device
    started = time.perf_counter()
    probe = MemoryProbe(device)
    source = request.source.path or str(random_weights_dir(spec.model, request.source.config, device))
    if device == "cuda":
        set_allocator(spec.allocator)
        apply_cap(plan.cap_gib)
        probe.reset_peak()
    steps = spec.warmup_steps + spec.measured_steps
    t0 = time.perf_counter()
    model = load_4bit(source, device, DTYPES[spec.dtype])
    vocab = model.config.vocab_size
    batch = make_batch(spec.padding, spec.batch_size, spec.seq_len, vocab, "cpu")
    measured = measured_batches(spec, vocab, "cpu")  # with a length distribution; the longest stays
    tmp = tempfile.TemporaryDirectory()
    args = SFTConfig(
        output_dir=tmp.name,
        max_steps=steps,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=max(spec.eval_batch_size, 1),
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        optim=spec.optimizer,
        fp16=spec.dtype == "fp16",
        bf16=spec.dtype == "bf16",
        gradient_checkpointing=spec.grad_ckpt,
        max_length=spec.seq_len,
        packing=spec.padding == "packed",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        seed=0,
    )
    if not request.source.path:
        ensure_tokenizer(Path(source), vocab)
    trainer = SFTTrainer(
        model=model,
        args=args,
        processing_class=AutoTokenizer.from_pretrained(source, local_files_only=True),
        train_dataset=Dataset.from_list(_rows(batch, *measured)),
        peft_config=lora_config(spec.lora_rank, spec.lora_alpha, spec.lora_dropout, spec.target_modules),
    )
    free_memory(device)
    probe.sync()
    row.update(model_load="loaded", load_s=time.perf_counter() - t0)
    load_peak = probe.peak()
    row["load_alloc_gib"], row["load_reserved_gib"] = probe.now()
    trainable, total = trainer.model.get_nb_trainable_parameters()
    row.update(trainable_params=trainable, total_params=total)

    record = _StepRecorder(probe, spec.warmup_steps)

    class Recorder(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            record.begin()

        def on_step_end(self, *args, **kwargs):
            record.end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            record.log(logs or {})

    trainer.add_callback(Recorder())
    trainer.remove_callback(PrinterCallback)  # it prints every step's logs
    try:
        trainer.train()
    except NotImplementedError as exc:
        if "_amp_foreach_non_finite_check_and_unscale" in str(exc) and spec.dtype == "fp16":
            raise RuntimeError(
                "TRL casts the LoRA adapters of a quantized model to bf16, and fp16's GradScaler "
                "cannot unscale bf16 gradients (fails at the first optimizer step): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        raise
    probe.sync()
    peaks = [load_peak, *record.peaks]
    row["first_step_peak_alloc_gib"], row["first_step_peak_reserved_gib"] = record.first
    row["steady_peak_alloc_gib"], row["steady_peak_reserved_gib"] = record.steady
    row["sdpa_backend_used"] = record.backends.used
    row["warmup_s"] = sum(record.times[: spec.warmup_steps])
    if spec.eval_batch_size:
        eval_batch = make_batch(spec.padding, spec.eval_batch_size, spec.seq_len, vocab, "cpu", seed=99)
        with timed_pass(probe, row, "eval", peaks), evaluation_oom(spec.eval_batch_size):
            trainer.evaluate(eval_dataset=Dataset.from_list(_rows(eval_batch)))  # its own eval mode
        if spec.eval_new_tokens:
            generate(trainer.model, spec, device, probe, row, peaks)
    record_peaks(row, probe, peaks, device)
    times = record.times[spec.warmup_steps :]
    losses = record.losses
    row.update(
        **step_time_columns(
            times, real_tokens(batch) if not measured else _epoch_mean(batch, measured, times)
        ),
        loss_first=losses[0] if losses else None,
        loss_last=losses[-1] if losses else None,
        trial_wall_s=time.perf_counter() - started,
    )
    bad = [v for v in losses if v != v or v in (float("inf"), float("-inf"))]
    if bad or len(losses) < steps:
        row.update(status="error", tokens_per_s=None, step_time_p50_s=None, step_time_p90_s=None)
        row["reason"] = f"non-finite or missing loss ({len(losses)} of {steps} logged); throughput not valid"
    else:
        row.update(status="ok", reason="")
    del trainer, model
    tmp.cleanup()
    return row


class _StepRecorder:
    """Peaks and device-synchronised times of the trainer's steps, as bench.trial records its
    own: the first step's peak, the rest of the warm-up's, the measured steps'; the SDPA kernels
    of the first step."""

    def __init__(self, probe: MemoryProbe, warmup_steps: int):
        self.probe, self.warmup_steps = probe, warmup_steps
        self.times: list[float] = []
        self.losses: list[float] = []
        self.first = self.warm = self.steady = (None, None)
        self.backends = BackendProbe()
        self._t0 = 0.0

    @property
    def peaks(self) -> list[tuple]:
        return [p for p in (self.first, self.warm, self.steady) if p[0] is not None]

    def begin(self) -> None:
        step = len(self.times)  # steps done so far
        self.probe.sync()
        if step in (0, 1, self.warmup_steps):
            self.probe.reset_peak()
        if step == 0:
            self.backends.__enter__()
        self._t0 = time.perf_counter()

    def end(self) -> None:
        self.probe.sync()
        self.times.append(time.perf_counter() - self._t0)
        done = len(self.times)
        peak = self.probe.peak()
        if done == 1:
            self.backends.__exit__(None, None, None)
            self.first = peak
        elif done == self.warmup_steps:
            self.warm = peak
        if done > self.warmup_steps:
            self.steady = peak
        self.probe.sample_nvml()

    def log(self, logs: dict) -> None:
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
