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


def test_a_preloaded_model_measures_the_same_peak_as_loading_in_the_trial():
    """The boundary search runs every trial in a fresh worker whose model a spare loaded while
    the previous trial ran. That must not change what the trial measures."""
    from dataclasses import replace

    capped = {**NATIVE, "cap_gib": 7.3}
    before = TrialSpec("llama-3.2-1b", 512, 1, 8, "fp16", True, 16, warmup_steps=1, measured_steps=2)
    probe = replace(before, seq_len=1536)
    fresh, spare = WorkerPool(), WorkerPool(spares=1, preload=True, fresh_each_trial=True)
    try:
        loaded = _run(fresh, probe, capped)
        _run(spare, before, capped)
        preloaded = _run(spare, probe, capped)
    finally:
        fresh.close()
        spare.close()
    assert loaded["model_load"] == "loaded" and preloaded["model_load"] == "preloaded", (loaded, preloaded)
    for column in ("load_alloc_gib", "load_reserved_gib", "peak_alloc_gib", "peak_reserved_gib"):
        assert preloaded[column] == pytest.approx(loaded[column], abs=1 / 1024), column
