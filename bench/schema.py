"""The result row: one documented schema, one CSV row per trial. GiB = 2**30 bytes.

A trial's configuration columns are TrialSpec's fields, documented there (bench.spec).
"""

from bench.spec import TRIAL_DOC

SCHEMA_VERSION = 9
GIB = 2**30

STATUSES = ("ok", "oom", "unsupported", "error", "timeout")
# a boundary's band: its columns, and the purpose of the probes that searched each (at a moved cap)
BAND_COLUMNS = ("band_low", "band_high")

# (column, meaning). The order here is the CSV column order.
COLUMNS: list[tuple[str, str]] = [
    ("schema_version", "version of this schema; a file with another version is refused"),
    ("trial_key", "identity of the configuration; resume skips keys already recorded"),
    ("profile", "hardware profile name (profiles/<name>.yaml)"),
    ("device", "cuda or cpu"),
    ("emulated", "true when the profile's card was emulated on a larger GPU (allocator capped)"),
    ("host_gpu", "the GPU that actually ran the trial (empty on cpu)"),
    ("model", TRIAL_DOC["model"]),
    ("weights", TRIAL_DOC["weights"]),
    ("seq_len", TRIAL_DOC["seq_len"]),
    ("batch_size", TRIAL_DOC["batch_size"]),
    ("lora_rank", TRIAL_DOC["lora_rank"]),
    ("lora_alpha", TRIAL_DOC["lora_alpha"]),
    ("lora_dropout", TRIAL_DOC["lora_dropout"]),
    ("target_modules", TRIAL_DOC["target_modules"]),
    ("dtype", TRIAL_DOC["dtype"]),
    ("grad_ckpt", TRIAL_DOC["grad_ckpt"]),
    ("optimizer", TRIAL_DOC["optimizer"]),
    ("warmup_steps", TRIAL_DOC["warmup_steps"]),
    ("measured_steps", TRIAL_DOC["measured_steps"]),
    ("status", "ok | oom | unsupported | error | timeout"),
    ("reason", "why the status is not ok (the error's first line), empty when ok"),
    ("inferred_from", "trial_key of a smaller configuration that OOMed; this one was not run"),
    ("trainable_params", "LoRA parameters trained"),
    ("total_params", "all parameters, 4-bit weights counted as unpacked values"),
    ("mem_cap_gib", "allocator cap applied (reserved memory limit); empty when not emulated"),
    ("load_alloc_gib", "torch allocated after model load, LoRA and prepare (steady weights)"),
    (
        "load_reserved_gib",
        "torch reserved after load, once what the load left cached is freed, as transformers' "
        "Trainer does before its first step",
    ),
    ("first_step_peak_alloc_gib", "peak torch allocated during the first step"),
    ("first_step_peak_reserved_gib", "peak torch reserved during the first step"),
    ("steady_peak_alloc_gib", "peak torch allocated over the measured steps"),
    ("steady_peak_reserved_gib", "peak torch reserved over the measured steps"),
    ("peak_alloc_gib", "peak torch allocated over the whole trial"),
    ("peak_reserved_gib", "peak torch reserved over the whole trial (what an OOM is decided on)"),
    ("nvml_process_max_gib", "NVML memory of the worker process, CUDA context included, max over step ends"),
    ("nvml_device_used_max_gib", "NVML memory used on the whole device, max over step ends"),
    ("cpu_peak_rss_gib", "peak resident memory of the worker during the trial"),
    ("step_time_p50_s", "median measured step time, device-synchronised"),
    ("step_time_p90_s", "90th percentile measured step time"),
    ("tokens_per_s", "batch_size * seq_len / step_time_p50_s"),
    ("step_times_s", "every measured step time, ';'-separated"),
    ("loss_first", "loss of the first step (random tokens: about ln(vocab))"),
    ("loss_last", "loss of the last step"),
    ("workload", TRIAL_DOC["workload"]),
    ("format_success", "share of held-out outputs that are exactly valid JSON (sft workload)"),
    ("field_accuracy", "share of fields equal to the reference (sft workload)"),
    ("format_note", "why format_success is empty, or what it was measured after"),
    ("trial_wall_s", "wall time of the trial in the worker, load included when it loaded"),
    (
        "warmup_s",
        "seconds of the warm-up steps (each model's load ends with one short step of its own, "
        "so these are steps as the trial ran them)",
    ),
    (
        "model_load",
        "loaded (during this trial), preloaded (by a spare worker before the trial arrived, as "
        "the trial would have loaded it, while other trials ran) or reused (kept from this "
        "worker's previous trial of the same model, after the allocator came back, block for "
        "block, to the state the load left)",
    ),
    ("load_s", "seconds spent loading, quantising and wrapping the model"),
    ("sdpa_backends", "SDPA backends allowed (the target card's)"),
    ("gpu_name", "GPU name as torch reports it"),
    ("gpu_compute_capability", "of the host GPU"),
    ("gpu_total_gib", "host GPU total memory as torch reports it"),
    ("driver", "NVIDIA driver version (NVML)"),
    ("cuda", "CUDA runtime torch was built with"),
    ("torch", "version"),
    ("transformers", "version"),
    ("peft", "version"),
    ("bitsandbytes", "version"),
    ("accelerate", "version"),
    ("python", "version"),
    ("git_commit", "qlora-bench commit (+dirty when the tree had changes)"),
    ("image", "container image that ran it (QLORA_BENCH_IMAGE, set in the image); empty outside one"),
    ("recipe", TRIAL_DOC["recipe"]),
    ("padding", TRIAL_DOC["padding"]),
    ("lengths", TRIAL_DOC["lengths"]),
    ("eval_batch_size", TRIAL_DOC["eval_batch_size"]),
    ("eval_new_tokens", TRIAL_DOC["eval_new_tokens"]),
    ("allocator", TRIAL_DOC["allocator"]),
    ("recipe_versions", "the recipe's own libraries beside the base stack's columns, name=version;..."),
    (
        "sdpa_backend_used",
        "SDPA kernel(s) that ran in the first step, read off its operators (flash, efficient, "
        "cudnn, math, flash-cpu; none: the stack's own attention), '+'-joined",
    ),
    ("eval_peak_alloc_gib", "peak torch allocated during the evaluation forward (eval_batch_size > 0)"),
    ("eval_peak_reserved_gib", "peak torch reserved during the evaluation forward"),
    ("eval_s", "seconds of the evaluation forward"),
    ("gen_peak_alloc_gib", "peak torch allocated during the evaluation's generation (eval_new_tokens > 0)"),
    ("gen_peak_reserved_gib", "peak torch reserved during the evaluation's generation"),
    ("gen_s", "seconds of the evaluation's generation"),
    ("timestamp_utc", "when the trial ended, ISO 8601"),
]

FIELDNAMES = [name for name, _ in COLUMNS]

# The columns that say what ran a trial, beside its TrialSpec fields: the run's environment
# (bench.runner) and the rows' identities. W&B takes these as a run's config, the rest as metrics.
ENVIRONMENT_COLUMNS = (
    "profile",
    "device",
    "emulated",
    "host_gpu",
    "mem_cap_gib",
    "sdpa_backends",
    "gpu_name",
    "gpu_compute_capability",
    "gpu_total_gib",
    "driver",
    "cuda",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "python",
    "git_commit",
    "image",
    "recipe_versions",
)
IDENTITY_COLUMNS = ("schema_version", "trial_key", "boundary_key", "axis", "step", "upper_limit")

# Columns each schema version added: a file of an older version is upgraded on read by adding
# them empty (their meaning: not measured), so published results stay readable.
ADDED_IN = {
    2: ["workload", "format_success", "field_accuracy", "format_note"],
    3: ["model_load", "load_s"],
    4: ["search_hint"],
    5: ["warmup_s", "image"],
    6: ["recipe"],
    7: [
        "padding",
        "eval_batch_size",
        "allocator",
        "recipe_versions",
        "sdpa_backend_used",
        "eval_peak_alloc_gib",
        "eval_peak_reserved_gib",
        "eval_s",
    ],
    8: ["safe_value", "oom_below"],
    9: [
        "lengths",
        "eval_new_tokens",
        "gen_peak_alloc_gib",
        "gen_peak_reserved_gib",
        "gen_s",
        "band_low",
        "band_high",
    ],
}
# What an upgraded row gets in an added column when empty would be wrong.
UPGRADE_VALUES = {
    "workload": "step",
    "recipe": "peft",
    "padding": "none",
    "lengths": "fixed",
    "eval_batch_size": "0",
    "eval_new_tokens": "0",
    "allocator": "default",
}


def fieldnames_at(fieldnames: list[str], version: int) -> list[str]:
    """The columns a file of `fieldnames` had at schema `version`."""
    later = {name for v, names in ADDED_IN.items() if v > version for name in names}
    return [name for name in fieldnames if name not in later]


# Every probe of a boundary search is a trial row plus these columns (boundary-trials.csv).
PROBE_COLUMNS: list[tuple[str, str]] = [
    ("boundary_key", "the boundary this trial searched or verified"),
    ("purpose", "search (a probe of the search) or verify (a --reverify re-run in a new fresh worker)"),
    ("probe_wall_s", "seconds from handing the trial to a worker to its result, as the sweep saw it"),
]
PROBE_FIELDNAMES = FIELDNAMES + [name for name, _ in PROBE_COLUMNS]

# One row per boundary (boundaries.csv).
BOUNDARY_COLUMNS: list[tuple[str, str]] = [
    ("schema_version", "version of this schema"),
    ("boundary_key", "identity: profile axis, model, fixed axes and trial settings"),
    ("profile", "hardware profile"),
    ("emulated", "true when the card was emulated on a larger GPU"),
    ("host_gpu", "the GPU that ran the probes"),
    ("mem_cap_gib", "allocator cap applied (empty when native)"),
    ("axis", "seq_len (largest sequence at batch 1) or batch_size (largest batch at seq_len)"),
    ("model", "catalogue name"),
    ("seq_len", "fixed sequence length for a batch_size boundary; empty for a seq_len boundary"),
    ("batch_size", "fixed batch size for a seq_len boundary (1); empty for a batch boundary"),
    ("lora_rank", "LoRA r"),
    ("lora_alpha", "LoRA alpha"),
    ("dtype", "fp16 or bf16"),
    ("grad_ckpt", "gradient checkpointing"),
    ("optimizer", "optimizer"),
    ("step", "search granularity: 64 tokens for seq_len, 1 sequence for batch_size"),
    ("upper_limit", "largest value searched (model context or 32768 tokens; batch limit)"),
    ("status", "ok | unsupported | error"),
    ("reason", "why status is not ok"),
    ("max_value", "largest value that fits (0: even the smallest OOMs)"),
    ("first_oom_value", "max_value + step, which OOMed; empty when max_value is upper_limit"),
    ("peak_alloc_gib", "peak torch allocated at max_value"),
    ("peak_reserved_gib", "peak torch reserved at max_value"),
    ("nvml_process_max_gib", "NVML process memory at max_value, CUDA context included"),
    ("search_trials", "trials the search took (--reverify re-runs not counted)"),
    (
        "search_hint",
        "where the search started: a sibling's boundary (another rank, or for a batch search the "
        "batch-1 sequence boundary's tokens); empty: from the smallest value up",
    ),
    (
        "verify_fit_status",
        "status of max_value run from a fresh load's allocator state: the search's own probe, or "
        "with --reverify (and schema 3 files) a re-run in a new worker",
    ),
    ("verify_oom_status", "status of first_oom_value (as verify_fit_status)"),
    (
        "safe_value",
        "largest value with every probed value at or below it fitting (a scan below max_value, "
        "--safe-scan); empty: not scanned",
    ),
    ("oom_below", "values below max_value that ran out of memory, ';'-joined (an inversion near the cap)"),
    (
        "band_low",
        "the boundary searched again with the allocator cap --band GiB lower (a card's context, "
        "cuBLAS workspace and driver reserve vary by about that much); empty: not searched",
    ),
    ("band_high", "the same with the cap --band GiB higher"),
    ("verified", "true when max_value ran ok and max_value + step ran oom, neither inferred"),
    ("search_wall_s", "wall time of the search (and its re-runs)"),
    ("gpu_name", "GPU name"),
    ("driver", "NVIDIA driver"),
    ("cuda", "CUDA runtime of torch"),
    ("torch", "version"),
    ("transformers", "version"),
    ("peft", "version"),
    ("bitsandbytes", "version"),
    ("git_commit", "qlora-bench commit"),
    ("image", "container image that ran it; empty outside one"),
    ("recipe", "training stack the probes ran (see the trial columns)"),
    ("padding", TRIAL_DOC["padding"]),
    ("lengths", TRIAL_DOC["lengths"]),
    ("eval_batch_size", TRIAL_DOC["eval_batch_size"]),
    ("eval_new_tokens", TRIAL_DOC["eval_new_tokens"]),
    ("allocator", TRIAL_DOC["allocator"]),
    ("recipe_versions", "the recipe's own libraries, name=version;..."),
    ("timestamp_utc", "when the boundary was recorded"),
]
BOUNDARY_FIELDNAMES = [name for name, _ in BOUNDARY_COLUMNS]


def markdown() -> str:
    lines = ["| column | meaning |", "| --- | --- |"]
    lines += [f"| `{name}` | {doc.replace('|', chr(92) + '|')} |" for name, doc in COLUMNS]
    return "\n".join(lines)
