"""GPU checks (skipped without CUDA): the numbers every published table rests on."""

import pytest

from bench.catalog import load_catalog
from bench.spec import TrialSpec
from bench.worker import WorkerPool

pytestmark = pytest.mark.gpu

NATIVE = {
    "device": "cuda",
    "cap_gib": None,
    "sdpa_backends": ["flash", "efficient", "math"],
    "allow_tf32": True,
}


def _run(pool, spec, plan):
    source = {"config": load_catalog()[spec.model].config}
    return pool.run(({**spec.to_row(), "key": spec.key}, plan, source), timeout=600)


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
    capped = {**NATIVE, "cap_gib": 3.15, "sdpa_backends": ["efficient", "math"], "allow_tf32": False}
    pool = WorkerPool()
    try:
        row = _run(pool, TrialSpec("qwen2.5-0.5b", 4096, 2, 8, "fp16", False, 16), capped)
    finally:
        pool.close()
    assert row["status"] == "oom", row
    assert row["peak_reserved_gib"] <= 3.15


def test_warm_and_fresh_workers_measure_the_same_peak():
    """Reusing a worker across trials must not change what a trial measures."""
    capped = {**NATIVE, "cap_gib": 7.3}
    probe = TrialSpec("llama-3.2-1b", 1024, 1, 8, "fp16", True, 16, warmup_steps=1, measured_steps=2)
    warm = WorkerPool()
    fresh = WorkerPool()
    try:
        _run(warm, TrialSpec("qwen2.5-0.5b", 2048, 2, 16, "fp16", False, 32), capped)  # leaves state
        after_other = _run(warm, probe, capped)
        first = _run(fresh, probe, capped)
    finally:
        warm.close()
        fresh.close()
    assert after_other["status"] == first["status"] == "ok", (after_other, first)
    assert after_other["peak_alloc_gib"] == pytest.approx(first["peak_alloc_gib"], abs=1 / 1024)
    assert after_other["peak_reserved_gib"] == pytest.approx(first["peak_reserved_gib"], abs=0.0625)


def test_reused_and_preloaded_models_measure_the_same_peak_as_a_fresh_load():
    """A warm worker keeps its model after a fitting trial; a spare loads the next trial's model
    before it arrives. Neither may change what the trial measures (the boundaries rest on it)."""
    from dataclasses import replace

    capped = {**NATIVE, "cap_gib": 7.3}
    before = TrialSpec("llama-3.2-1b", 512, 1, 8, "fp16", True, 16, warmup_steps=1, measured_steps=2)
    probe = replace(before, seq_len=1536)
    warm, fresh, spare = WorkerPool(), WorkerPool(), WorkerPool(spares=1, preload=True)
    try:
        _run(warm, before, capped)
        reused = _run(warm, probe, capped)
        loaded = _run(fresh, probe, capped)
        _run(spare, before, capped)
        spare.retire()
        preloaded = _run(spare, probe, capped)
    finally:
        for pool in (warm, fresh, spare):
            pool.close()
    rows = {"reused": reused, "loaded": loaded, "preloaded": preloaded}
    for how, row in rows.items():
        assert row["status"] == "ok" and row["model_load"] == how, row
        assert row["peak_alloc_gib"] == pytest.approx(loaded["peak_alloc_gib"], abs=1 / 1024), how
        assert row["peak_reserved_gib"] == pytest.approx(loaded["peak_reserved_gib"], abs=0.0625), how
        assert row["load_reserved_gib"] == pytest.approx(loaded["load_reserved_gib"], abs=0.0625), how
