"""GPU checks (skipped without CUDA): the numbers every published table rests on."""

from dataclasses import replace

import pytest

from bench.catalog import load_catalog
from bench.emulation import Plan
from bench.messages import ModelSource, TrialRequest
from bench.pool import WorkerPool
from bench.spec import TrialSpec

pytestmark = pytest.mark.gpu

NATIVE = Plan("cuda", False, "", None, ("flash", "efficient", "math"), True)
SMALL_CARD = replace(NATIVE, cap_gib=3.15, sdpa_backends=("efficient", "math"), allow_tf32=False)


def _request(spec, plan):
    return TrialRequest(spec, plan, ModelSource(config=load_catalog()[spec.model].config))


def _run(pool, spec, plan):
    return pool.run(_request(spec, plan), timeout=600).row


def test_gradient_checkpointing_lowers_peak_memory():
    """A silent no-op here (e.g. the model left in eval mode) would corrupt every published number."""
    pool = WorkerPool()
    try:
        rows = {
            gc: _run(pool, TrialSpec("qwen2.5-0.5b", 2048, 1, 8, "fp16", gc, 16), NATIVE)
            for gc in (False, True)
        }
    finally:
        pool.close()
    assert rows[True]["status"] == rows[False]["status"] == "ok", rows
    assert rows[True]["peak_alloc_gib"] < 0.75 * rows[False]["peak_alloc_gib"], rows


def test_emulation_cap_bounds_reserved_memory():
    """Under an emulated 4 GB card the allocator never reserves past the cap: it OOMs instead."""
    pool = WorkerPool()
    try:
        row = _run(pool, TrialSpec("qwen2.5-0.5b", 4096, 2, 8, "fp16", False, 16), SMALL_CARD)
    finally:
        pool.close()
    assert row["status"] == "oom", row
    assert row["peak_reserved_gib"] <= 3.15


MEMORY = (
    "load_alloc_gib",
    "load_reserved_gib",
    "first_step_peak_alloc_gib",
    "first_step_peak_reserved_gib",
    "steady_peak_alloc_gib",
    "steady_peak_reserved_gib",
    "peak_alloc_gib",
    "peak_reserved_gib",
)


@pytest.mark.parametrize(
    "spec, plan",
    [
        (
            TrialSpec("llama-3.2-1b", 1536, 1, 8, "fp16", True, 16, warmup_steps=1, measured_steps=2),
            replace(NATIVE, cap_gib=7.3),
        ),
        (
            TrialSpec("qwen2.5-0.5b", 320, 1, 16, "bf16", False, 32, warmup_steps=2, measured_steps=2),
            SMALL_CARD,
        ),
    ],
    ids=["1b-fp16-ckpt", "0.5b-bf16"],
)
def test_a_kept_model_measures_what_a_fresh_worker_measures_to_the_byte(spec, plan):
    """A worker keeps its model from probe to probe, after a fit and after an OOM alike; a
    spare whose CUDA context was created while it waited takes over for a new model, or has
    preloaded it while another model's probes ran. None of that may change what a probe
    measures against a new worker that loads for it."""
    other = TrialSpec("qwen2.5-0.5b", 1024, 1, 16, "fp16", False, 32, warmup_steps=1, measured_steps=1)
    if other.model == spec.model:
        other = replace(other, model="llama-3.2-1b")
    other_plan = replace(NATIVE, cap_gib=12.0)
    fresh, pool = WorkerPool(), WorkerPool(spares=1, cuda=True)
    try:
        loaded = _run(fresh, spec, plan)
        spare = [_run(pool, other, other_plan), _run(pool, spec, plan)]
        after_fit = [_run(pool, replace(spec, seq_len=spec.seq_len // 2), plan), _run(pool, spec, plan)]
        after_oom = [_run(pool, replace(spec, seq_len=spec.seq_len * 16), plan), _run(pool, spec, plan)]
        pool.expect([_request(other, other_plan), _request(spec, plan)])
        preloaded = [_run(pool, other, other_plan), _run(pool, spec, plan)]
    finally:
        fresh.close()
        pool.close()
    assert loaded["status"] == "ok" and loaded["model_load"] == "loaded", loaded
    assert after_fit[0]["status"] == "ok" and after_oom[0]["status"] == "oom", (after_fit, after_oom)
    probes = {
        "in a spare": spare[1],
        "after a fit": after_fit[1],
        "after an OOM": after_oom[1],
        "preloaded": preloaded[1],
    }
    for how, row in probes.items():
        assert row["status"] == "ok", (how, row)
    assert [row["model_load"] for row in probes.values()] == ["loaded", "reused", "reused", "preloaded"]
    for column in MEMORY:
        for how, row in probes.items():
            assert row[column] == loaded[column], (column, how, row[column], loaded[column])


def test_kernels_profiles_a_step_on_the_gpu(tmp_path):
    """`qlora-bench kernels` on the GPU host's own torch (2.11 on the H200 keeps no dtypes in its
    profiler events, which a CPU test on a newer torch cannot catch): every class has GPU time,
    the matrix products FLOPs, the step a wall time at least the GPU's busy time."""
    import csv

    from click.testing import CliRunner

    from bench.cli import main

    out = tmp_path / "k.csv"
    args = ["kernels", "--profile", "h200", "--models", "tiny", "--seq-lens", "128",
            "--batch-sizes", "1", "--ranks", "8", "--dtypes", "bf16", "--grad-ckpt", "on",
            "--profile-steps", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {r["class"]: r for r in csv.DictReader(out.open())}
    assert {"gemm", "dequant", "elementwise", "optimizer", "step"} <= set(rows)
    assert float(rows["gemm"]["flops"]) > 0 and float(rows["elementwise"]["bytes"]) > 0
    assert float(rows["step"]["wall_ms"]) >= float(rows["step"]["busy_ms"]) > 0
