"""The sweep on CPU with the tiny model: real QLoRA trials, faults, resume after SIGKILL."""

from pathlib import Path

import pytest
from conftest import REPO, cli, cpu_request, read_rows

pytestmark = pytest.mark.slow


def test_real_qlora_trial_on_cpu(tmp_path):
    """The whole path: grid -> worker -> NF4 + LoRA step -> CSV row, bf16 gated on the T4."""
    result = cli(
        "--profile",
        "t4",
        "--device",
        "cpu",
        "--seq-lens",
        "128",
        "--batch-sizes",
        "2",
        "--ranks",
        "8",
        "--dtypes",
        "fp16,bf16",
        "--grad-ckpt",
        "on",
        "--results-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "t4" / "trials-cpu.csv")
    by_dtype = {r["dtype"]: r for r in rows}
    ok = by_dtype["fp16"]
    assert ok["status"] == "ok", ok["reason"]
    assert ok["model"] == "tiny" and ok["device"] == "cpu" and ok["emulated"] == "false"
    assert int(ok["trainable_params"]) > 0
    assert int(ok["trainable_params"]) < int(ok["total_params"])
    times = [float(t) for t in ok["step_times_s"].split(";")]
    assert len(times) == 5 and all(t > 0 for t in times)
    assert float(ok["tokens_per_s"]) == pytest.approx(2 * 128 / float(ok["step_time_p50_s"]), rel=1e-5)
    assert 0 < float(ok["loss_last"]) < 20 and float(ok["cpu_peak_rss_gib"]) > 0
    assert ok["peak_alloc_gib"] == "" and ok["nvml_process_max_gib"] == ""  # GPU-only columns
    for column in ("torch", "transformers", "peft", "bitsandbytes", "python", "timestamp_utc"):
        assert ok[column], column
    bf16 = by_dtype["bf16"]
    assert bf16["status"] == "unsupported"
    assert "compute capability" in bf16["reason"] and "7.5" in bf16["reason"]
    for row in rows:  # plan-level columns are on every row, run or not
        assert row["sdpa_backends"] == "efficient,math" and row["profile"] == "t4"


def test_a_worker_keeps_its_model_while_the_allocator_restores_and_is_replaced_otherwise(monkeypatch):
    """A worker keeps its model after a trial that fit or ran out of memory, for the next trial
    of that model. A new worker (the spare) takes over for another model, when the allocator did
    not come back to its state after the load (the `unclean` fault), or after a failed trial."""
    from dataclasses import replace

    from bench.pool import WorkerPool
    from bench.spec import TrialSpec

    monkeypatch.setenv("QLORA_BENCH_INJECT", "s=96|:unclean,s=160|:raise,s=224|:oom")
    first = TrialSpec("tiny", 64, 1, 4, "fp16", False, 8, warmup_steps=1, measured_steps=1)
    other_lora = replace(first, lora_rank=8, lora_alpha=16)

    def run(pool, spec):
        return pool.run(cpu_request(spec), timeout=300).row

    pool = WorkerPool(spares=1)
    try:
        rows = [run(pool, replace(first, seq_len=s)) for s in (64, 128, 224, 128, 96, 128, 160, 128)]
        rows += [run(pool, other_lora), run(pool, replace(other_lora, batch_size=2)), run(pool, first)]
    finally:
        pool.close()
    statuses = ["ok", "ok", "oom", "ok", "ok", "ok", "error", "ok", "ok", "ok", "ok"]
    assert [r["status"] for r in rows] == statuses, rows
    assert [r.get("model_load") for r in rows] == [
        "loaded",
        "reused",
        None,  # an OOM (here before the step): the model is kept
        "reused",
        "reused",  # ... after which the allocator did not come back: a new worker takes over
        "loaded",
        None,  # raised before its step: a new worker takes over
        "loaded",
        "loaded",  # another model: a new worker
        "reused",
        "loaded",  # and back: a new worker again
    ]
    assert all(r["load_s"] > 0 for r in rows if "model_load" in r)
    assert rows[0]["trainable_params"] == rows[1]["trainable_params"] < rows[8]["trainable_params"]
    assert rows[8]["trainable_params"] == rows[9]["trainable_params"]


def test_a_spare_preloads_the_next_model_as_the_trial_would_have_loaded_it():
    """Told which models come next, the pool has its spare load the next one while the current
    worker's trials run; that trial then starts from the state of a load (the same loss as in a
    new worker, to the bit). A preload that fails leaves the trial to load in a clean worker."""
    from dataclasses import replace

    from bench.messages import ModelSource
    from bench.pool import WorkerPool
    from bench.spec import TrialSpec

    nowhere = ModelSource(path="/nonexistent")
    first = TrialSpec("tiny", 64, 1, 4, "fp16", False, 8, warmup_steps=1, measured_steps=1)
    second, third = replace(first, lora_rank=8, lora_alpha=16), replace(first, lora_rank=16, lora_alpha=32)

    def run(pool, spec, source=None):
        return pool.run(cpu_request(spec, source), 300).row

    pool, fresh = WorkerPool(spares=1), WorkerPool()
    try:
        pool.expect([cpu_request(first), cpu_request(second), cpu_request(third, nowhere)])
        rows = [run(pool, s) for s in (first, replace(first, seq_len=96), second)]
        rows.append(run(pool, replace(second, seq_len=96)))
        broken = run(pool, third, nowhere)
        alone = run(fresh, second)
        pool.expect([cpu_request(first), cpu_request(third)])  # with `first` held, its spare loads `third`
        assert [w.preloading for w in pool._spare] == [None]  # (the next run sends it)
        run(pool, first)
        assert len(pool._spare) == 1 and pool._spare[0].preloading
        pool.expect([])  # nothing more to come: the spare holding `third` goes
        assert pool._spare == []
    finally:
        pool.close()
        fresh.close()
    assert [r["status"] for r in rows] == ["ok"] * 4, rows
    assert [r["model_load"] for r in rows] == ["loaded", "reused", "preloaded", "reused"]
    assert rows[2]["loss_first"] == alone["loss_first"] and rows[2]["loss_last"] == alone["loss_last"]
    assert rows[2]["trainable_params"] == alone["trainable_params"] > rows[0]["trainable_params"]
    assert broken["status"] == "error" and "nonexistent" in broken["reason"], broken


def test_a_fresh_trial_runs_in_a_worker_that_ran_none_and_the_spare_loads_the_model_again():
    """pool.run(fresh=True) (boundary --fresh): never on a kept model; the spare preloads the
    same model for the next fresh trial, so a fresh load costs no load time after the first."""
    from dataclasses import replace

    from bench.pool import WorkerPool
    from bench.spec import TrialSpec

    first = TrialSpec("tiny", 64, 1, 4, "fp16", False, 8, warmup_steps=1, measured_steps=1)
    pool = WorkerPool(spares=1)
    try:
        pool.expect([cpu_request(first)])
        rows = [pool.run(cpu_request(replace(first, seq_len=s)), 300, fresh=True).row for s in (64, 96, 128)]
        rows.append(pool.run(cpu_request(first), 300).row)  # not fresh: the model is kept
    finally:
        pool.close()
    assert [r["status"] for r in rows] == ["ok"] * 4, rows
    assert [r["model_load"] for r in rows] == ["loaded", "preloaded", "preloaded", "reused"]


def test_a_kept_model_is_released_unless_the_allocator_is_back_where_the_load_left_it(monkeypatch):
    """ModelSlot.restore frees the trial's gradients and answers whether the allocator's state
    equals the one right after the load (here a stand-in for CUDA's snapshot)."""
    import torch

    from bench import trial

    state = {"now": "after load"}
    monkeypatch.setattr(trial, "allocator_state", lambda device: state["now"])
    slot = trial.ModelSlot()
    assert not slot.restore("cpu")  # nothing held
    slot.model, slot.baseline = torch.nn.Linear(4, 4), "after load"
    slot.model(torch.ones(1, 4)).sum().backward()
    assert slot.model.weight.grad is not None
    assert slot.restore("cpu")
    assert slot.model.weight.grad is None
    state["now"] = "a segment more"
    assert not slot.restore("cpu")


SWEEP = [
    "--profile",
    "rtx3050",
    "--device",
    "cpu",
    "--seq-lens",
    "64,96,128,160,192,224",
    "--batch-sizes",
    "1",
    "--ranks",
    "4",
    "--dtypes",
    "fp16",
    "--grad-ckpt",
    "on,off",
    "--warmup-steps",
    "1",
    "--steps",
    "2",
]


def test_overwrite_redoes_recorded_points(tmp_path):
    args = [*SWEEP[:5], "64", *SWEEP[6:], "--results-dir", str(tmp_path)]
    assert cli(*args).returncode == 0
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    first = read_rows(path)
    assert cli(*args, "--overwrite").returncode == 0
    second = read_rows(path)
    assert [r["trial_key"] for r in second] == [r["trial_key"] for r in first]
    assert [r["step_times_s"] for r in second] != [r["step_times_s"] for r in first]


def test_real_weights_from_a_local_directory_and_paged_optimizer(tmp_path):
    """--weights takes a local model directory (no hub); the paged 8-bit AdamW option runs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.catalog import load_catalog

    model_dir = tmp_path / "my-model"
    config = AutoConfig.for_model(**load_catalog()["tiny"].config)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    result = cli(
        "--profile",
        "rtx3050",
        "--device",
        "cpu",
        "--weights",
        str(model_dir),
        "--seq-lens",
        "64",
        "--batch-sizes",
        "1",
        "--ranks",
        "4",
        "--dtypes",
        "bf16",
        "--grad-ckpt",
        "off",
        "--optimizer",
        "paged_adamw_8bit",
        "--results-dir",
        str(tmp_path / "r"),
    )
    assert result.returncode == 0, result.stderr
    (row,) = read_rows(tmp_path / "r" / "rtx3050-laptop" / "trials-cpu.csv")
    assert row["status"] == "ok", row["reason"]
    assert row["weights"] == str(model_dir) and row["optimizer"] == "paged_adamw_8bit"


def test_rows_written_by_another_sweep_while_waiting_are_kept(tmp_path):
    """A store read before another sweep wrote must not drop that sweep's rows on append."""
    from bench.results import ResultsFile

    path = tmp_path / "trials.csv"
    late = ResultsFile(path)  # read (empty) before the other sweep wrote
    other = ResultsFile(path)
    other.lock()
    other.append({"trial_key": "a", "status": "ok"})
    other.unlock()
    late.lock()
    late.append({"trial_key": "b", "status": "ok"})
    late.unlock()
    assert [r["trial_key"] for r in read_rows(path)] == ["a", "b"]


PUBLISHED = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "results").glob("*/*.csv")
    if p.stem in ("trials", "boundary-trials", "boundaries")
)


@pytest.mark.parametrize("relpath", PUBLISHED)
def test_published_files_of_older_schemas_are_upgraded_not_refused(tmp_path, relpath):
    """Every committed results file stays readable and resumable: columns added since are empty
    (not measured), keys and values kept, nothing lost on append."""
    import shutil

    from bench.results import ResultsFile
    from bench.schema import BOUNDARY_FIELDNAMES, FIELDNAMES, PROBE_FIELDNAMES

    fieldnames, key = {
        "trials": (FIELDNAMES, "trial_key"),
        "boundary-trials": (PROBE_FIELDNAMES, "trial_key"),
        "boundaries": (BOUNDARY_FIELDNAMES, "boundary_key"),
    }[Path(relpath).stem]
    path = tmp_path / "file.csv"
    shutil.copy(REPO / relpath, path)
    original = read_rows(path)
    store = ResultsFile(path, fieldnames, key)
    assert [r[key] for r in store.rows] == [r[key] for r in original]
    store.lock()
    store.append({key: "new", "status": "ok"})
    store.unlock()
    rows = read_rows(path)
    assert list(rows[0]) == fieldnames and len(rows) == len(original) + 1
    kept = [(i, k, v) for i in range(len(original)) for k, v in original[i].items() if k != "schema_version"]
    assert all(rows[i].get(k) == v for i, k, v in kept)
    if "workload" in fieldnames and "workload" not in original[0]:
        assert all(r["workload"] == "step" for r in rows[:-1])


def test_sft_workload_puts_format_success_in_the_row_or_says_why_not(tmp_path):
    from bench.catalog import load_catalog
    from bench.extraction import data, tiny

    splits = data.generate(2000, seed=0)
    model_dir = tiny.build_tiny(
        load_catalog()["tiny"].config, [r["prompt"] + "\n" + r["completion"] for r in splits["train"]]
    )
    common = [
        "--profile",
        "rtx3050",
        "--device",
        "cpu",
        "--seq-lens",
        "256",
        "--batch-sizes",
        "16",
        "--ranks",
        "16",
        "--dtypes",
        "bf16",
        "--grad-ckpt",
        "off",
        "--workload",
        "sft",
        "--sft-steps",
        "20",
        "--sft-lr",
        "3e-3",
        "--sft-eval-samples",
        "3",
    ]
    random_run = cli(*common, "--results-dir", str(tmp_path / "random"))
    assert random_run.returncode == 0, random_run.stderr
    (row,) = read_rows(tmp_path / "random" / "rtx3050-laptop" / "trials-cpu.csv")
    assert row["status"] == "ok" and row["format_success"] == "" and "random weights" in row["format_note"]
    real_run = cli(*common, "--weights", str(model_dir), "--results-dir", str(tmp_path / "real"))
    assert real_run.returncode == 0, real_run.stderr
    (row,) = read_rows(tmp_path / "real" / "rtx3050-laptop" / "trials-cpu.csv")
    assert row["status"] == "ok", row["reason"]
    assert 0.0 <= float(row["format_success"]) <= 1.0 and row["workload"] == "sft:20:0.003:3"
    assert row["format_note"].startswith("after 20 SFT steps")


def test_the_loop_recipe_keeps_the_frozen_parameters_in_the_compute_dtype(tmp_path):
    """peft's prepare_model_for_kbit_training casts every parameter that is not 4-bit (embeddings,
    LM head, norms) to fp32; a hand-written loop (recipe loop) leaves them in the compute dtype.
    Both train the same LoRA parameters; a sweep of both records one row per recipe, the peft row
    under the key it always had."""
    import torch

    from bench.catalog import load_catalog
    from bench.qlora import load_qlora_model, random_weights_dir

    source = str(random_weights_dir("tiny", load_catalog()["tiny"].config, "cpu"))
    settings = dict(dtype="fp16", grad_ckpt=True, lora_rank=4, lora_alpha=8, lora_dropout=0.05)
    peft = load_qlora_model(source, "cpu", recipe="peft", **settings)
    loop = load_qlora_model(source, "cpu", recipe="loop", **settings)
    assert peft.get_input_embeddings().weight.dtype == torch.float32
    assert loop.get_input_embeddings().weight.dtype == torch.float16
    assert peft.get_nb_trainable_parameters() == loop.get_nb_trainable_parameters()
    assert loop.training and loop.base_model.model.is_gradient_checkpointing

    args = [*SWEEP[:5], "64", *SWEEP[6:-6], "--grad-ckpt", "on", *SWEEP[-4:]]
    result = cli(*args, "--recipe", "peft,loop", "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "rtx3050-laptop" / "trials-cpu.csv")
    assert sorted((r["recipe"], r["grad_ckpt"], r["status"]) for r in rows) == [
        ("loop", "true", "ok"),
        ("peft", "true", "ok"),
    ]
    for row in rows:
        assert row["trial_key"].endswith("|recipe=loop") == (row["recipe"] == "loop")
