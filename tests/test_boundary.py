"""Boundary search: exact on a known memory curve, few trials, verified end to end on CPU."""

import csv

import pytest
from conftest import cli

from bench.boundary import SEQ_STEP, BoundaryTask, search
from bench.spec import TrialSpec

BASE = TrialSpec("tiny", 0, 1, 8, "fp16", True, 16)
CAP = 3.15


def memory(spec):  # a synthetic card: 0.7 GiB of weights + 0.9 MiB per token
    return 0.7 + spec.batch_size * spec.seq_len * 0.9 / 1024


def fake_probe(calls):
    def probe(spec):
        calls.append(spec)
        peak = memory(spec)
        return {"status": "ok", "peak_reserved_gib": peak} if peak <= CAP else {"status": "oom"}

    return probe


@pytest.mark.parametrize("cap", [CAP, None])
def test_seq_search_finds_the_exact_boundary(cap):
    task = BoundaryTask("seq_len", BASE, 32768 // SEQ_STEP, SEQ_STEP, 512 // SEQ_STEP)
    calls = []
    found = search(task, fake_probe(calls), cap)
    exact = max(u for u in range(1, 513) if memory(task.at(u)) <= CAP)
    assert found["lo"] == exact and found["hi"] == exact + 1
    assert found["trials"] == len(calls) <= 12  # a scan would take ~40
    assert len({c.seq_len for c in calls}) == len(calls)  # never probes a point twice


def test_guided_search_needs_fewer_trials_than_blind_bisection():
    task = BoundaryTask("seq_len", BASE, 32768 // SEQ_STEP, SEQ_STEP, 512 // SEQ_STEP)
    guided, blind = [], []
    search(task, fake_probe(guided), CAP)
    search(task, fake_probe(blind), None)
    assert len(guided) < len(blind)


def test_batch_search_and_nothing_fits():
    task = BoundaryTask("batch_size", TrialSpec("tiny", 1024, 0, 8, "fp16", True, 16), 256, 1, 1)
    found = search(task, fake_probe([]), CAP)
    assert (found["lo"], found["hi"]) == (2, 3)
    huge = BoundaryTask("batch_size", TrialSpec("tiny", 8192, 0, 8, "fp16", True, 16), 256, 1, 1)
    assert (search(huge, fake_probe([]), CAP)["lo"]) == 0


def test_an_error_stops_the_search_with_its_reason():
    task = BoundaryTask("seq_len", BASE, 64, SEQ_STEP, 8)
    found = search(task, lambda spec: {"status": "error", "reason": "worker died with SIGSEGV"}, CAP)
    assert "SIGSEGV" in found["error"] and found["trials"] == 1


@pytest.mark.slow
def test_boundary_command_on_cpu_finds_verifies_and_resumes(tmp_path):
    """A simulated memory limit of 1000 tokens: longest sequence 960, largest batch at 256: 3."""
    args = [
        "boundary",
        "--profile",
        "rtx3050",
        "--device",
        "cpu",
        "--ranks",
        "4",
        "--dtypes",
        "fp16,bf16",
        "--grad-ckpt",
        "off",
        "--ref-seq-lens",
        "256",
        "--results-dir",
        str(tmp_path),
    ]
    env = {"QLORA_BENCH_INJECT": "tokens>1000:oom"}
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv", newline="") as f:
        rows = {(r["axis"], r["dtype"]): r for r in csv.DictReader(f)}
    assert len(rows) == 4
    for dtype in ("fp16", "bf16"):
        seq, batch = rows[("seq_len", dtype)], rows[("batch_size", dtype)]
        assert (seq["max_value"], seq["first_oom_value"], seq["verified"]) == ("960", "1024", "true")
        assert (batch["max_value"], batch["first_oom_value"], batch["verified"]) == ("3", "4", "true")
    again = cli(*args, env=env)
    assert again.returncode == 0 and "0 boundaries" in again.stderr


@pytest.mark.slow
def test_a_profile_run_can_end_with_its_boundaries(tmp_path):
    result = cli(
        "--profile",
        "rtx3050",
        "--device",
        "cpu",
        "--seq-lens",
        "64",
        "--batch-sizes",
        "1",
        "--ranks",
        "4",
        "--dtypes",
        "fp16",
        "--grad-ckpt",
        "off",
        "--boundaries",
        "--results-dir",
        str(tmp_path),
        env={"QLORA_BENCH_INJECT": "tokens>1000:oom"},
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "rtx3050-laptop"
    assert (folder / "trials-cpu.csv").exists()
    with open(folder / "boundaries-cpu.csv", newline="") as f:
        got = {(r["axis"], r["seq_len"]): r["max_value"] for r in csv.DictReader(f)}
    assert got == {
        ("seq_len", ""): "960",
        ("batch_size", "512"): "1",
        ("batch_size", "1024"): "0",
        ("batch_size", "2048"): "0",
    }
