"""Boundary search: exact on a known memory curve, few trials, verified end to end on CPU."""

import csv
import json

import pytest
from conftest import boundary_config, cli, read_rows, search_args

from bench.boundary import SEQ_STEP, BoundaryTask, search
from bench.boundary.search import resume_hint
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


def test_the_safe_scan_finds_an_inversion_below_the_boundary_and_the_safe_value():
    """t4 Qwen2.5-7B r16 fp16 with checkpointing: 1792 fit, 1856-1984 ran out of memory, 2048
    fit. A search can stop at 2048; the scan below it reports 1792 as the safe value."""
    task = BoundaryTask("seq_len", BASE, 32768 // SEQ_STEP, SEQ_STEP, 512 // SEQ_STEP)
    bad = {1856, 1920, 1984}

    def probe(spec):
        fits = spec.seq_len <= 2048 and spec.seq_len not in bad
        return {"status": "ok", "peak_reserved_gib": 1.0} if fits else {"status": "oom"}

    found = search(task, probe, None, hint=2048 // SEQ_STEP, safe_scan=3)
    assert (found["lo"], found["hi"]) == (32, 33)  # the hint's neighbours: 2048 fits, 2112 does not
    assert found["safe"] * SEQ_STEP == 1792 and [u * SEQ_STEP for u in found["inversions"]] == sorted(bad)
    assert found["trials"] == 2 + 3 + 3  # the search, the three OOMs, three fits in a row below them
    monotone = search(task, fake_probe([]), CAP, safe_scan=3)
    assert monotone["safe"] == monotone["lo"] and monotone["inversions"] == []


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
        "4,8",
        "--dtypes",
        "fp16",
        "--grad-ckpt",
        "off",
        "--ref-seq-lens",
        "256",
        "--safe-scan",
        "0",  # the hints' trial counts below; the scan has its own tests
        "--results-dir",
        str(tmp_path),
    ]
    env = {"QLORA_BENCH_INJECT": "tokens>1000:oom"}
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv", newline="") as f:
        rows = {(r["axis"], r["lora_rank"]): r for r in csv.DictReader(f)}
    assert len(rows) == 4
    for rank in ("4", "8"):
        seq, batch = rows[("seq_len", rank)], rows[("batch_size", rank)]
        assert (seq["max_value"], seq["first_oom_value"], seq["verified"]) == ("960", "1024", "true")
        assert (batch["max_value"], batch["first_oom_value"], batch["verified"]) == ("3", "4", "true")
    # rank 4's sequence search starts blind; its batch search starts at 960 // 256 = 3 tokens'
    # worth, rank 8's searches at rank 4's boundaries: each of those settles in two trials
    assert rows[("seq_len", "4")]["search_hint"] == ""
    assert rows[("batch_size", "4")]["search_hint"] == "3"
    assert (rows[("seq_len", "8")]["search_hint"], rows[("batch_size", "8")]["search_hint"]) == ("960", "3")
    assert [
        rows[k]["search_trials"] for k in [("batch_size", "4"), ("seq_len", "8"), ("batch_size", "8")]
    ] == [
        "2",
        "2",
        "2",
    ]
    with open(tmp_path / "rtx3050-laptop" / "boundary-trials-cpu.csv", newline="") as f:
        probes = list(csv.DictReader(f))
    assert {p["purpose"] for p in probes} == {"search"}
    assert len(probes) == sum(int(r["search_trials"]) for r in rows.values())
    again = cli(*args, env=env)
    assert again.returncode == 0 and "0 boundaries" in again.stderr


def test_a_fresh_search_loads_the_model_for_every_probe_and_finds_the_same_boundary(tmp_path):
    """--fresh: no probe on a kept model (a user's run starts from a fresh load)."""
    env = {"QLORA_BENCH_INJECT": "tokens>1000:oom", "QLORA_BENCH_GIT_COMMIT": "0123abc"}
    loads = {}
    for name, extra in (("kept", []), ("fresh", ["--fresh"])):
        done = cli(*search_args(tmp_path / name, "--safe-scan", "0", *extra), env=env)
        assert done.returncode == 0, done.stderr
        probes = read_rows(tmp_path / name / "rtx3050-laptop" / "boundary-trials-cpu.csv")
        loads[name] = {p["model_load"] for p in probes if p["status"] == "ok"}  # (an injected OOM: none)
        (row,) = read_rows(tmp_path / name / "rtx3050-laptop" / "boundaries-cpu.csv")
        assert (row["max_value"], row["first_oom_value"]) == ("960", "1024")
    assert loads == {"kept": {"loaded", "reused"}, "fresh": {"loaded"}}  # on CPU no spare preloads
    for name in loads:  # the run line says how
        (line,) = (tmp_path / name / "rtx3050-laptop" / "boundary-runs-cpu.jsonl").read_text().splitlines()
        assert json.loads(line)["fresh"] is (name == "fresh")


def test_the_evaluation_batch_is_searched_after_training_at_batch_1_and_reported(tmp_path):
    """A simulated limit of 1000 tokens in training or evaluation: at 256 tokens the largest
    evaluation batch is 3."""
    result = cli(
        "boundary", "--profile", "rtx3050", "--device", "cpu", "--ranks", "8", "--dtypes", "fp16",
        "--grad-ckpt", "off", "--axes", "eval_batch_size", "--ref-seq-lens", "256", "--safe-scan", "0",
        "--results-dir", str(tmp_path), env={"QLORA_BENCH_INJECT": "tokens>1000:oom"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["axis"], row["seq_len"], row["batch_size"], row["eval_batch_size"]) == (
        "eval_batch_size",
        "256",
        "1",
        "",
    )
    assert (row["max_value"], row["first_oom_value"], row["verified"]) == ("3", "4", "true")
    assert (
        row["boundary_key"].startswith("eval_batch_size|tiny|")
        and "|eval_batch_size=*" in row["boundary_key"]
    )
    from bench.report import profile_section
    from bench.results import read_results

    rows = read_results(tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv")
    text = "\n".join(profile_section("rtx3050-laptop", rows, ["tiny"]))
    assert "Largest evaluation batch (after training at batch 1) at 256 tokens:" in text
    assert "| tiny | 8 | 3 |" in text


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


@pytest.mark.slow
def test_several_profiles_are_searched_together_each_into_its_own_files(tmp_path):
    """`--profile` repeated: one run, the profiles' groups sharing the slots; each profile's
    rows land in its own folder, and its run log names the profiles it ran with. An alias of
    a profile already named runs once."""
    import json

    args = ["boundary", "--profile", "rtx3050", "--profile", "gtx1650", "--profile", "rtx3050-laptop"]
    args += ["--device", "cpu", "--ranks", "4", "--dtypes", "fp16", "--grad-ckpt", "off"]
    args += ["--axes", "seq_len", "--results-dir", str(tmp_path)]
    result = cli(*args, env={"QLORA_BENCH_INJECT": "tokens>1000:oom"})
    assert result.returncode == 0, result.stderr
    for name, other in (("rtx3050-laptop", "gtx1650"), ("gtx1650", "rtx3050-laptop")):
        with open(tmp_path / name / "boundaries-cpu.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["profile"], r["max_value"], r["verified"]) for r in rows] == [(name, "960", "true")]
        runs = (tmp_path / name / "boundary-runs-cpu.jsonl").read_text().splitlines()
        assert [json.loads(line)["together_with"] for line in runs] == [[other]]


@pytest.mark.parametrize("offset", [0, 1, -1, 7, -7, 90, -40])
def test_a_hinted_search_finds_the_exact_boundary_and_a_good_hint_costs_two_trials(offset):
    task = BoundaryTask("seq_len", BASE, 32768 // SEQ_STEP, SEQ_STEP, 512 // SEQ_STEP)
    exact = max(u for u in range(1, 513) if memory(task.at(u)) <= CAP)
    calls = []
    found = search(task, fake_probe(calls), CAP, hint=exact + offset)
    assert (found["lo"], found["hi"]) == (exact, exact + 1)
    assert len({c.seq_len for c in calls}) == len(calls)
    if offset in (0, 1):
        assert found["trials"] == 2
    # near hints settle in a few trials; a hint 2-3x off costs about what no hint costs
    assert found["trials"] <= (8 if abs(offset) <= 7 else 16)


def test_a_search_cut_short_resumes_where_its_probes_left_off():
    task = BoundaryTask("seq_len", BASE, 32768 // SEQ_STEP, SEQ_STEP, 512 // SEQ_STEP)
    exact = max(u for u in range(1, 513) if memory(task.at(u)) <= CAP)
    calls, probe = [], fake_probe([])

    def cut(spec):  # the run is killed after its third probe
        if len(calls) == 3:
            raise TimeoutError
        calls.append(spec)
        return probe(spec)

    with pytest.raises(TimeoutError):
        search(task, cut, CAP)
    rows = [  # as boundary-trials.csv holds them (strings), beside another search's and a band's
        {"boundary_key": task.key, "purpose": "search", "seq_len": str(c.seq_len), **probe(c)} for c in calls
    ]
    rows += [
        {"boundary_key": "other", "purpose": "search", "seq_len": "99999", "status": "ok"},
        {"boundary_key": task.key, "purpose": "band_high", "seq_len": str(exact * 64 + 64), "status": "ok"},
    ]
    hint = resume_hint(task, rows)
    fits = [c.seq_len // SEQ_STEP for c in calls if memory(c) <= CAP]
    assert hint == max(fits) <= exact
    resumed = search(task, fake_probe([]), CAP, hint=hint)
    assert (resumed["lo"], resumed["hi"]) == (exact, exact + 1) and resumed["trials"] <= 8
    assert resume_hint(task, rows[-2:]) is None  # nothing of its own: no hint


def test_a_probe_recorded_by_the_same_commit_card_and_libraries_is_reused_and_no_other():
    from bench.boundary.reuse import recorded_probe

    new = {  # a new probe's row before it runs, as BoundaryRun._probe builds it
        "boundary_key": "seq_len|k", "trial_key": "t|s=1024", "purpose": "band_low", "mem_cap_gib": 3.4,
        "emulated": True, "git_commit": "abc123", "gpu_name": "NVIDIA H200", "torch": "2.11.0",
    }  # fmt: skip
    row = {k: ("true" if v is True else str(v)) for k, v in new.items()}
    row.update(status="ok", peak_reserved_gib="3.21", reason="")
    reused = recorded_probe([row], new)
    assert reused["status"] == "ok" and reused["peak_reserved_gib"] == 3.21 and reused["reason"] is None
    for column, other in [  # another cap, purpose, commit, card or library: run again
        ("mem_cap_gib", 3.7), ("purpose", "search"), ("git_commit", "def456"),
        ("gpu_name", "NVIDIA H100"), ("torch", "2.13.0"), ("trial_key", "t|s=1088"),
    ]:  # fmt: skip
        assert recorded_probe([row], {**new, column: other}) is None, column
    assert recorded_probe([{**row, "status": "error"}], new) is None  # a failed probe runs again
    kept = {**row, "model_load": "reused"}  # --fresh reuses a probe after a fresh load only
    assert recorded_probe([kept], new) is not None and recorded_probe([kept], new, fresh=True) is None
    assert recorded_probe([{**row, "model_load": "preloaded"}], new, fresh=True) is not None
    for commit in ("abc123+dirty", "unknown", ""):  # what ran is not known
        assert recorded_probe([{**row, "git_commit": commit}], {**new, "git_commit": commit}) is None


def test_a_hint_past_either_end_is_clamped():
    task = BoundaryTask("batch_size", TrialSpec("tiny", 1024, 0, 8, "fp16", True, 16), 256, 1, 1)
    found = search(task, fake_probe([]), CAP, hint=10_000)
    assert (found["lo"], found["hi"]) == (2, 3)
    huge = BoundaryTask("batch_size", TrialSpec("tiny", 8192, 0, 8, "fp16", True, 16), 256, 1, 1)
    calls = []
    assert search(huge, fake_probe(calls), CAP, hint=0)["lo"] == 0 and len(calls) == 1


@pytest.mark.torch
def test_slots_are_sized_for_the_smallest_cap_and_larger_caps_run_fewer_at_once(monkeypatch, tmp_path):
    """On the H200 (139.8 GiB by NVML) an l4 slot holds its 21.7 GiB cap and two CUDA contexts
    (worker and spare): five l4 searches at once; with a 4 GB card's profile beside it, 8 slots
    (the most). A group of several model settings also holds the next setting's model, which
    the spare preloads, so fewer groups of large models run at once."""
    import threading

    from bench import emulation
    from bench.boundary import BoundaryRun
    from bench.boundary.schedule import HOST_HEADROOM_GIB, GpuBudget, auto_parallel, slot_gib
    from bench.envinfo import HostGPU
    from bench.profiles import load_profile

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    host = HostGPU("NVIDIA H200", 139.8, (9, 0), "580")
    cfg = boundary_config("l4", tmp_path)
    plan = emulation.plan(cfg.profile, "cuda", host)
    budget = host.total_gib - HOST_HEADROOM_GIB
    assert auto_parallel([(cfg, plan)], host) == int(budget // slot_gib(plan)) == 5
    small = emulation.plan(load_profile("gtx1650"), "cuda", host)
    assert auto_parallel([(cfg, plan), (cfg, small)], host) == 8

    monkeypatch.setattr("bench.runner.nvml_gpu", lambda: host)
    run = BoundaryRun(cfg)
    run.todo = run.tasks
    groups = {(g[0].base.model, g[0].base.dtype): g for g in run.groups()}
    assert len(groups) == 6 * 2  # per model and precision: 2 ranks x 2 checkpointing settings each
    group = groups["qwen2.5-7b", "bf16"]
    assert len(run.settings(group)) == 4
    assert [(t.base.grad_ckpt, t.base.lora_rank) for t in group[:5]] == [(False, 8)] * 4 + [(False, 16)]
    loaded = cfg.catalog["qwen2.5-7b"].loaded_gib_estimate()
    assert 9 < loaded < plan.cap_gib and run.share(group) == slot_gib(plan) + loaded
    assert int(budget // run.share(group)) == 3
    assert run.share(group[:4]) == slot_gib(plan)  # one setting: nothing to preload

    # on the H200 natively (its own profile: no cap) a slot holds the whole card, no preload
    native = BoundaryRun(boundary_config("h200", tmp_path))
    assert native.runner.plan.cap_gib is None
    native.todo = native.tasks
    assert all(native.share(g) == slot_gib(native.runner.plan) == float("inf") for g in native.groups())

    gpu = GpuBudget(10.0)
    huge = ["huge"]
    assert gpu.take_first(huge, {"huge": 25.0}.get) == ("huge", 10.0)  # clamped: it can run alone
    waiting = ["small"]
    waiter = threading.Thread(target=gpu.take_first, args=(waiting, {"small": 4.0}.get))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waits until the running one gives its share back
    gpu.give(10.0)
    waiter.join(5)
    assert not waiter.is_alive() and gpu.free == 6.0 and waiting == []

    # a large group at the head of the queue does not hold back a smaller one that fits
    waiting = ["big", "small"]
    assert gpu.take_first(waiting, {"big": 8.0, "small": 5.0}.get) == ("small", 5.0)
    assert waiting == ["big"] and gpu.free == 1.0
    gpu.give(5.0)
    gpu.give(4.0)
    assert gpu.take_first(waiting, {"big": 8.0}.get) == ("big", 8.0) and gpu.free == 2.0
    gpu.give(8.0)  # nothing waiting and no group out (one out could be handed back): None
    assert gpu.take_first([], {}.get) is None


def test_verify_runs_published_boundaries_on_the_card_itself_and_report_shows_them(tmp_path):
    """On the CPU (the card itself: emulated false) with a simulated limit of 1000 tokens, a
    searched boundary (960, then 1024) verified: the fit fits and the next step runs out."""
    env = {"QLORA_BENCH_INJECT": "tokens>1000:oom"}
    common = ["--profile", "rtx3050", "--device", "cpu", "--results-dir", str(tmp_path)]
    searched = cli(
        "boundary", *common, "--ranks", "8", "--dtypes", "fp16", "--grad-ckpt", "off", "--axes", "seq_len",
        "--safe-scan", "0", env=env,
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr
    result = cli("verify", *common, env=env)
    assert result.returncode == 0, result.stderr
    assert "1 of 1 boundaries as published on this card" in result.stdout
    from bench.report import profile_section
    from bench.results import read_results
    from bench.verify import read_checked, section

    folder = tmp_path / "rtx3050-laptop"
    rows = read_checked(folder / "verify-cpu.csv")
    assert [(r["seq_len"], r["purpose"], r["status"], r["emulated"]) for r in rows] == [
        ("960", "verify-fit", "ok", "false"),
        ("1024", "verify-oom", "oom", "false"),
    ]
    assert rows[0]["trial_key"].endswith("|w1m2")  # the search's steps, not the sweep's default
    published = read_results(folder / "boundaries-cpu.csv")
    text = "\n".join(
        profile_section("rtx3050-laptop", published, ["tiny"]) + section("rtx3050-laptop", published, rows)
    )
    assert (
        "checked on the card itself" in text
        and "| 960 (then 1024) | ok | oom |" in text
        and "| yes |" in text
    )
    again = cli("verify", *common, env=env)  # resumes: nothing runs twice
    assert again.returncode == 0 and len(read_checked(folder / "verify-cpu.csv")) == 2
    elsewhere = cli("verify", "--profile", "t4", "--device", "cpu", "--results-dir", str(tmp_path))
    assert elsewhere.returncode == 2 and "no published boundaries of t4" in elsewhere.stderr


def test_the_band_searches_again_with_the_cap_lower_and_higher():
    from types import SimpleNamespace

    from bench.boundary.run import BoundaryRun

    run = object.__new__(BoundaryRun)  # only what _band uses
    run.runner = SimpleNamespace(plan=SimpleNamespace(cap_gib=CAP))
    run.cfg = SimpleNamespace(band_gib=0.2)
    seen = []

    def probe(pool, task, spec, purpose, cap=None):
        seen.append((purpose, cap))
        peak = memory(spec)
        return {"status": "ok", "peak_reserved_gib": peak} if peak <= cap else {"status": "oom"}

    run._probe = probe
    task = BoundaryTask("seq_len", BASE, 512, SEQ_STEP, 8)

    def longest(cap):  # the synthetic card's boundary under that cap
        return max(u * SEQ_STEP for u in range(1, 512) if memory(task.at(u)) <= cap)

    at_cap = search(task, fake_probe([]), CAP)
    band = run._band(task, None, at_cap)
    assert band == {"band_low": longest(CAP - 0.2), "band_high": longest(CAP + 0.2)}
    assert band["band_low"] < longest(CAP) < band["band_high"]
    assert {p for p, _ in seen} == {"band_low", "band_high"} and {round(c, 2) for _, c in seen} == {
        2.95,
        3.35,
    }
    run.cfg = SimpleNamespace(band_gib=0.0)
    assert run._band(task, None, at_cap) == {}  # not asked for: no probe


def test_a_band_probes_only_what_the_search_at_the_cards_cap_leaves_open():
    """Every fit at the card's cap fits under a higher one, a fit whose peak stayed under a lower
    cap fits there too, and an OOM at the card's cap is one under a lower cap: none is probed
    again. The band is the same as a search from scratch at each moved cap finds."""
    from bench.boundary.search import band, band_bounds

    task = BoundaryTask("seq_len", BASE, 512, SEQ_STEP, 8)
    calls = []
    at_cap = search(task, fake_probe(calls), CAP, safe_scan=3)
    lo, hi = at_cap["lo"], at_cap["hi"]
    seen = []

    def probe(spec, purpose, cap):
        seen.append((purpose, spec.seq_len // SEQ_STEP))
        peak = memory(spec)
        return {"status": "ok", "peak_reserved_gib": peak} if peak <= cap else {"status": "oom"}

    for moved_by in (0.02, 0.2, 1.0):
        seen.clear()
        found = band(task, probe, at_cap, CAP, moved_by)
        for column, cap in (("band_low", CAP - moved_by), ("band_high", CAP + moved_by)):
            scratch = search(task, lambda s, c=cap: probe(s, "scratch", c), cap)
            assert found[column] == scratch["lo"] * SEQ_STEP, (moved_by, column)
        floor, first_oom = band_bounds(at_cap, CAP, CAP - moved_by)
        assert first_oom == hi and floor == max(
            (u for u, r in at_cap["fits"].items() if r["peak_reserved_gib"] <= CAP - moved_by), default=0
        )
        assert all(floor < u < hi for p, u in seen if p == "band_low")
        assert all(u > lo for p, u in seen if p == "band_high")
    # a boundary of 0 (even the shortest ran out of memory) has 0 below it, unprobed
    nothing = {"lo": 0, "hi": 1, "fits": {}, "trials": 1}
    seen.clear()
    assert band(task, probe, nothing, CAP, 0.2)["band_low"] == 0
    assert [p for p, _ in seen].count("band_low") == 0


def test_an_idle_slot_waits_while_another_is_busy_and_takes_the_group_it_hands_back():
    """A slot that finds nothing waiting does not end while another slot is busy: that one may
    fail and hand back what is left of its group (GpuBudget.hand_back), which the idle one takes."""
    import threading

    from bench.boundary.schedule import GpuBudget

    budget, waiting, got = GpuBudget(10.0), [("run", ["a", "b"])], []
    (item, held) = budget.take_first(waiting, lambda item: 1.0)
    idle = threading.Thread(target=lambda: got.append(budget.take_first(waiting, lambda item: 1.0)))
    idle.start()
    idle.join(0.3)
    assert idle.is_alive() and not got  # nothing waiting, one busy: it waits
    budget.hand_back(waiting, ("run", ["b"]))
    budget.give(held)
    idle.join(5)
    assert got == [(("run", ["b"]), 1.0)]
    budget.give(got[0][1])  # none busy, none waiting: a slot asking now ends
    assert budget.take_first([], lambda item: 1.0) is None


@pytest.mark.torch
@pytest.mark.parametrize("kills", [1, 2])
def test_a_worker_killed_as_it_starts_is_replaced_once_then_its_slot_hands_its_group_on(
    tmp_path, monkeypatch, capsys, kills
):
    """The ninth session's third call on the H200: a worker died with SIGKILL before it was
    ready, and its slot's thread died with a traceback, its group left for a rerun. Now the pool
    starts another worker in its place (the tenth session's calls lost 5 of 16 slots to such
    kills, with host memory not short); when that one is killed too, the slot stops, says why,
    and hands the group back: the other slot searches it. Either way every boundary is recorded."""
    import os
    import signal
    import threading

    from bench.boundary import BoundaryRun, run_boundaries
    from bench.pool import Worker

    monkeypatch.setenv("QLORA_BENCH_INJECT", "tokens>1000:oom")
    monkeypatch.setenv("QLORA_BENCH_WORKER_START", "spawn")  # no forkserver keeping this env
    start, killed, lock = Worker.wait_ready, [], threading.Lock()

    def wait_ready(self, timeout):
        with lock:  # the first `kills` starts in the first slot thread that waits for one
            me = threading.current_thread()
            mine = me is not threading.main_thread() and (not killed or killed[0][0] is me)
            kill = mine and not self.ready and len(killed) < kills
            if kill:
                killed.append((me, self.process.pid))
        if kill:  # a slot's (not the weights' build), before its Ready: a spawned worker imports torch
            os.kill(self.process.pid, signal.SIGKILL)
        return start(self, timeout)

    monkeypatch.setattr(Worker, "wait_ready", wait_ready)
    cfg = boundary_config(
        "rtx3050-laptop", tmp_path, "cpu", ranks=(4,), dtypes=("fp16", "bf16"), grad_ckpt=(False,),
        search_axes=("seq_len",), measured_steps=1,
    )  # fmt: skip
    run = BoundaryRun(cfg)
    assert sorted(t.base.dtype for t in run.tasks) == ["bf16", "fp16"]  # two groups: one per precision
    (summary,) = run_boundaries([run], parallel=2)
    assert len(killed) == kills and (summary["boundaries"], summary["left"]) == (2, 0)
    err = capsys.readouterr().err
    died = "worker failed to start: worker died with SIGKILL (the OOM killer if host memory ran short"
    assert err.count(died) == kills
    assert "; starting another in its place" in err
    stopped = "its 1 searches left go back for another slot (or a rerun)"
    assert (f"a search slot stops, {died}" in err and stopped in err) == (kills == 2)
    rows = read_rows(tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv")
    assert sorted(r["dtype"] for r in rows) == ["bf16", "fp16"] and all(r["status"] == "ok" for r in rows)


def test_the_time_budget_counts_from_the_first_search_not_the_weights_build(tmp_path, monkeypatch):
    """A budget shorter than building the random-weight checkpoints still starts a search (it
    once started none), and no new search starts after it: one of the group's two is left."""
    import time

    from bench.boundary import BoundaryRun, run_boundaries, schedule

    monkeypatch.setenv("QLORA_BENCH_INJECT", "tokens>1000:oom")
    monkeypatch.setenv("QLORA_BENCH_WORKER_START", "spawn")  # no forkserver keeping this env
    build = schedule._prepare_weights
    monkeypatch.setattr(schedule, "_prepare_weights", lambda runs: (time.sleep(3), build(runs)))
    cfg = boundary_config(
        "rtx3050-laptop", tmp_path, "cpu", ranks=(4, 8), dtypes=("fp16",), grad_ckpt=(False,),
        search_axes=("seq_len",),
    )  # fmt: skip
    (summary,) = run_boundaries([BoundaryRun(cfg)], parallel=1, time_budget=1)
    assert (summary["boundaries"], summary["left"]) == (1, 1)


def test_a_later_commit_probing_a_point_again_keeps_the_earlier_probe_row(tmp_path):
    """A boundary searched again by another commit (a band's search, --overwrite) adds its probe
    rows beside the earlier commit's at the same points, which stay: nothing recorded is lost. The
    same commit probing a point again (--overwrite) replaces its own row."""
    args = search_args(tmp_path, "--safe-scan", "0")
    path = tmp_path / "rtx3050-laptop" / "boundary-trials-cpu.csv"

    def run(commit: str, *extra: str) -> list[tuple[str, str]]:
        env = {"QLORA_BENCH_INJECT": "tokens>1000:oom", "QLORA_BENCH_GIT_COMMIT": commit}
        result = cli(*args, *extra, env=env)
        assert result.returncode == 0, result.stderr
        return [(r["git_commit"], r["seq_len"]) for r in read_rows(path)]

    first = run("1111111")
    assert first and {c for c, _ in first} == {"1111111"}
    second = run("2222222", "--overwrite")  # starts at the recorded boundary: 960 and 1024 again
    assert second[: len(first)] == first  # the earlier commit's rows, unchanged
    again = [p for p in second[len(first) :] if p[0] == "2222222"]
    assert {("1111111", "960"), ("2222222", "960"), ("1111111", "1024"), ("2222222", "1024")} <= set(second)
    assert len(again) == len(second) - len(first)
    assert sorted(run("2222222", "--overwrite")) == sorted(second)  # its own rows replaced, none added


def test_a_band_asked_for_where_there_is_no_cap_says_so_and_searches_nothing_again(tmp_path):
    """--band moves an emulated card's allocator cap; on the card itself or on CPU there is none:
    the run says so and records no band, and a rerun does not search those boundaries again."""
    args = search_args(tmp_path, "--band", "0.3")
    env = {"QLORA_BENCH_INJECT": "tokens>1000:oom"}
    first = cli(*args, env=env)
    assert first.returncode == 0 and "rtx3050-laptop: no band: --band moves the allocator cap" in first.stderr
    (row,) = read_rows(tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv")
    assert (row["max_value"], row["band_low"], row["band_high"]) == ("960", "", "")
    again = cli(*args, env=env)
    assert again.returncode == 0 and "0 boundaries" in again.stderr, again.stderr


def test_a_band_asked_for_searches_again_the_boundaries_recorded_without_one():
    from bench.boundary.search import settled

    rows = [
        {"boundary_key": "a", "status": "ok", "band_low": "", "band_high": ""},  # published before bands
        {"boundary_key": "b", "status": "ok", "band_low": "896", "band_high": "1024"},
        {"boundary_key": "c", "status": "error", "band_low": "", "band_high": ""},
        {"boundary_key": "d", "status": "unsupported", "band_low": "", "band_high": ""},
    ]
    assert settled(rows, overwrite=False, band_gib=0.0) == {"a", "b", "d"}  # a failed search reruns
    assert settled(rows, overwrite=False, band_gib=0.3) == {"b", "d"}  # resumable: b is not redone
    assert settled(rows, overwrite=True, band_gib=0.3) == set()


def test_a_search_still_in_flight_when_the_run_line_is_written_records_nothing(tmp_path):
    """SIGTERM or Ctrl-C: the run line is written while a slot's search may still finish (seen on
    the H200: a row landed 6 s after its run line, past the lock). Past the line nothing is
    recorded; the rerun reuses the probes."""
    from bench.boundary.run import BoundaryRun

    run = BoundaryRun(boundary_config("rtx3050-laptop", tmp_path, device="cpu"))
    run.begin(1, None)
    run.end(0.0, "2026-12-03T00:00:00+00:00", [])
    task = run.tasks[0]
    run.record(task, {"boundary_key": task.key, "status": "ok", "max_value": 960})
    assert run.store.rows == [] and run.counts["boundaries"] == 0
