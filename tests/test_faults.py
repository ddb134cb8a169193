"""Fault injection: every trial ends recorded, nothing is lost or doubled, bad input is refused.

Each test injects its faults into real CPU sweeps (the tiny model, real QLoRA steps) and tallies
what happened in OUTCOMES; the last test renders the tally as docs/reliability.md's table (between the
`faults:` markers) and checks the page shows exactly that. After a change to the suite, write
the table with `QLORA_BENCH_WRITE_FAULT_TABLE=1 python -m pytest tests/test_faults.py`.
"""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli, read_rows, search_args

pytestmark = pytest.mark.slow

# fault -> {"injected": n, "lost": n, "doubled": n, "exit": {codes}, "outcome": text}
OUTCOMES: dict[str, dict] = {}
ORDER = [
    "out of memory in a trial",
    "segfault in the worker (SIGSEGV)",
    "abort in the worker (os.abort)",
    "hang (trial timeout)",
    "Python exception in a trial",
    "NaN/inf loss (an overflowing forward)",
    "worker killed by the OS (SIGKILL)",
    "sweep killed (SIGKILL to its process group), then rerun",
    "sweep interrupted (SIGINT, as Ctrl-C), then rerun",
    "torn last line from an older crash",
    "two sweeps at once on one results file",
    "unknown profile",
    "malformed profile YAML",
    "incomplete profile YAML",
    "unknown model",
    "zero or negative length / rank / batch",
    "bf16 on a card without native bf16",
    "results file of another schema version",
    "unwritable results directory",
    "disk full while writing a row",
    "W&B online, unreachable, no key",
    "NVML unavailable (no driver library)",
    "duplicate or empty item in a list option",
    "unknown key in a profile YAML",
    "profile name that is a path",
    "LoRA rank larger than the model's layers",
    "mistyped subcommand",
    "copied profile keeps a shipped name, other card facts",
    "damaged results file read by report / plot / compare",
    "report --output into a missing folder",
    "sft resumed with other settings",
    "sft into an unwritable folder",
    "trial timed out, rerun with a longer --timeout",
    "boundary search killed (SIGKILL), then rerun",
    "boundary run stopped by SIGTERM (as `timeout`, `docker stop`), then rerun",
    "boundary run stopped by SIGTERM mid-probe, its workers spawned",
    "boundary run on a local Dask cluster stopped by SIGTERM mid-search, then rerun",
    "sweep's main process alone killed (SIGKILL, as the OOM killer), rerun at once",
    "compare run outside the repository",
    "report / plot with only CPU test rows",
    "a pipe character in a column's meaning (schema table)",
]


def tally(fault: str, outcome: str, exit_code: int | None = None, lost=0, doubled=0, injected=1):
    entry = OUTCOMES.setdefault(
        fault, {"injected": 0, "lost": 0, "doubled": 0, "exit": set(), "outcome": outcome}
    )
    entry["injected"] += injected
    entry["lost"] += lost
    entry["doubled"] += doubled
    if exit_code is not None:
        entry["exit"].add(exit_code)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


GRID = ["--profile", "rtx3050", "--device", "cpu", "--batch-sizes", "1", "--ranks", "4"]
GRID += ["--dtypes", "fp16", "--grad-ckpt", "off", "--warmup-steps", "1", "--steps", "2", "--wandb", "off"]


def test_faults_inside_trials_each_give_one_row_and_the_sweep_goes_on(tmp_path):
    faults = {
        64: ("oom", "out of memory in a trial", "oom", "allocate"),
        128: ("segfault", "segfault in the worker (SIGSEGV)", "error", "SIGSEGV"),
        192: ("abort", "abort in the worker (os.abort)", "error", "SIGABRT"),
        256: ("hang", "hang (trial timeout)", "timeout", "worker killed"),
        320: ("raise", "Python exception in a trial", "error", "injected failure"),
        384: ("nan", "NaN/inf loss (an overflowing forward)", "error", "non-finite loss"),
        448: ("sigkill", "worker killed by the OS (SIGKILL)", "error", "SIGKILL"),
    }
    inject = ",".join(f"s={seq}|b=1:{fault}" for seq, (fault, *_) in faults.items())
    seqs = ",".join(str(s) for s in [*faults, 512])
    result = cli(
        *GRID,
        "--seq-lens",
        seqs,
        "--timeout",
        "20",
        "--no-skip-implied",  # every point runs, even past the OOM
        "--results-dir",
        str(tmp_path),
        env={"QLORA_BENCH_INJECT": inject},
    )
    rows = {int(r["seq_len"]): r for r in read_rows(tmp_path / "rtx3050-laptop" / "trials-cpu.csv")}
    assert result.returncode == 1, result.stderr  # errors were recorded: exit 1
    assert sorted(rows) == [*faults, 512]  # one row per point
    assert rows[512]["status"] == "ok", rows[512]["reason"]  # the sweep went on
    for seq, (_, name, status, reason) in faults.items():
        row = rows[seq]
        assert row["status"] == status and reason in row["reason"], (name, row["status"], row["reason"])
        if status != "oom":  # no throughput from a trial that failed
            assert row["tokens_per_s"] == "" and row["step_time_p50_s"] == "", name
        tally(name, f"one row: status `{status}`, reason names it; the next trial runs", result.returncode)


def _pending(path: Path) -> list[dict]:
    return read_rows(path) if path.exists() else []


def test_sweep_killed_or_interrupted_at_random_moments_loses_and_doubles_nothing(tmp_path):
    """SIGKILL and SIGINT (to the whole process group, as a terminal's Ctrl-C) at random moments;
    after each, the CSV parses, every earlier row is still there unchanged, none twice; the same
    command run again completes the grid."""
    # 80 points: work left for every kill (with 40, an unloaded CI machine finished the grid
    # before the last kill once)
    seqs = ",".join(str(64 * i) for i in range(1, 41))
    args = [*GRID, "--grad-ckpt", "on,off", "--seq-lens", seqs, "--results-dir", str(tmp_path)]
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    rng = random.Random(7)
    signals = [signal.SIGKILL, signal.SIGINT] * 4
    for sig in signals:
        before = _pending(path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        time.sleep(rng.uniform(3.0, 8.0))
        assert proc.poll() is None, "the sweep ended before its kill: the grid is too small"
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        after = _pending(path)
        keys = [r["trial_key"] for r in after]
        lost = sum(r not in after for r in before)
        doubled = len(keys) - len(set(keys))
        assert lost == 0 and doubled == 0 and after[: len(before)] == before
        assert not any("KeyboardInterrupt" in r["reason"] for r in after)  # Ctrl-C is no trial failure
        if sig == signal.SIGINT:
            assert proc.returncode in (0, 130), err
            if proc.returncode == 130:
                assert "interrupted; every finished trial is recorded" in err
            tally(
                "sweep interrupted (SIGINT, as Ctrl-C), then rerun",
                "exit 130, every finished trial recorded; the rerun completes the grid",
                proc.returncode,
                lost,
                doubled,
            )
        else:
            tally(
                "sweep killed (SIGKILL to its process group), then rerun",
                "the CSV parses; the rerun completes the grid",
                proc.returncode,
                lost,
                doubled,
            )
    before = _pending(path)
    result = cli(*args)
    after = read_rows(path)
    assert result.returncode == 0, result.stderr
    assert [r["seq_len"] for r in after if r["status"] == "ok"] and after[: len(before)] == before
    assert sorted(int(r["seq_len"]) for r in after) == sorted(2 * [int(s) for s in seqs.split(",")])


def test_a_torn_last_line_is_detected_kept_aside_and_run_again(tmp_path):
    args = [*GRID, "--seq-lens", "64,128", "--results-dir", str(tmp_path)]
    assert cli(*args).returncode == 0
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    whole = path.read_text()
    torn = whole[: len(whole) - len(whole.splitlines()[-1]) // 2 - 1]  # half the last row, no newline
    path.write_text(torn)
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "last line is torn" in result.stderr and "repaired" in result.stderr
    (backup,) = path.parent.glob("trials-cpu.csv.torn-*")
    assert backup.read_text() == torn  # the file as it was, kept
    rows = read_rows(path)
    assert [r["seq_len"] for r in rows] == ["64", "128"]  # the torn trial ran again, once
    assert rows[0] == next(csv.DictReader(whole.splitlines()))
    tally(
        "torn last line from an older crash",
        "detected, the file kept beside it, the trial run again",
        result.returncode,
    )


def test_two_sweeps_at_once_one_refuses_and_no_row_is_interleaved(tmp_path):
    args = [sys.executable, "-m", "bench", *GRID, "--seq-lens", "64,128,192", "--results-dir", str(tmp_path)]
    procs = [
        subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = outs[[p.returncode for p in procs].index(2)]
    assert "another sweep (pid" in refused and "is writing" in refused
    rows = read_rows(tmp_path / "rtx3050-laptop" / "trials-cpu.csv")
    assert [r["seq_len"] for r in rows] == ["64", "128", "192"]
    tally("two sweeps at once on one results file", "one runs; the other exits 2 naming the holder's pid", 2)


BAD_YAML = "name: bad\ngpu: [unclosed\n"
INCOMPLETE_YAML = "name: half\ndescription: no gpu section\ngrid: {models: [tiny]}\n"


@pytest.mark.parametrize(
    "fault, args, message",
    [
        ("unknown profile", ["--profile", "rtx9090"], "unknown profile 'rtx9090'"),
        ("malformed profile YAML", ["--profile", "{dir}/bad.yaml"], "bad.yaml"),
        ("incomplete profile YAML", ["--profile", "{dir}/half.yaml"], "half.yaml"),
        ("unknown model", ["--profile", "t4", "--models", "gpt-5"], "unknown model(s) ['gpt-5']"),
        ("zero or negative length / rank / batch", ["--profile", "t4", "--seq-lens", "0"], "must be > 0"),
        ("zero or negative length / rank / batch", ["--profile", "t4", "--ranks", "-8"], "must be > 0"),
        ("zero or negative length / rank / batch", ["--profile", "t4", "--batch-sizes", "0"], "must be > 0"),
        (
            "duplicate or empty item in a list option",
            ["--profile", "t4", "--seq-lens", "128,128"],
            "given twice",
        ),
        (
            "duplicate or empty item in a list option",
            ["--profile", "t4", "--seq-lens", "512,,1024"],
            "empty item",
        ),
        (
            "duplicate or empty item in a list option",
            ["--profile", "t4", "--models", "tiny,tiny"],
            "given twice",
        ),
        (
            "unknown key in a profile YAML",
            ["--profile", "{dir}/typo.yaml"],
            "gpu.usable_vram_gibb: unknown key (did you mean usable_vram_gib?)",
        ),
        ("profile name that is a path", ["--profile", "{dir}/escape.yaml"], "it names the results folder"),
        (
            "LoRA rank larger than the model's layers",
            ["--profile", "t4", "--ranks", "100000"],
            "larger than both dimensions of tiny's",
        ),
        ("mistyped subcommand", ["reprot"], "no such command 'reprot' (did you mean report?)"),
    ],
)
def test_bad_input_is_refused_with_exit_2_and_nothing_written(tmp_path, fault, args, message):
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    (tmp_path / "half.yaml").write_text(INCOMPLETE_YAML)
    t4 = (REPO / "profiles" / "t4.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(t4.replace("usable_vram_gib:", "usable_vram_gibb:"))
    (tmp_path / "escape.yaml").write_text(t4.replace("name: t4", "name: ../../etc"))
    args = [a.format(dir=tmp_path) for a in args]
    results = tmp_path / "results"
    result = cli(*args, "--device", "cpu", "--results-dir", str(results))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not results.exists()
    tally(fault, "exit 2, the message names the problem, nothing written", 2)


def test_bf16_on_a_card_without_it_is_recorded_unsupported(tmp_path):
    args = ["--profile", "t4", "--device", "cpu", "--seq-lens", "64", "--batch-sizes", "1", "--ranks", "4"]
    result = cli(
        *args, "--dtypes", "bf16", "--grad-ckpt", "off", "--wandb", "off", "--results-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    (row,) = read_rows(tmp_path / "t4" / "trials-cpu.csv")
    assert row["status"] == "unsupported" and "bf16" in row["reason"]
    tally(
        "bf16 on a card without native bf16", "a row with status `unsupported`, reason says why; not run", 0
    )


def test_a_results_file_of_another_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    path.parent.mkdir()
    path.write_text("schema_version,trial_key,status\n99,x,ok\n")
    before = snapshot(tmp_path)
    result = cli(*GRID, "--seq-lens", "64", "--results-dir", str(tmp_path))
    assert result.returncode == 2 and "schema version" in result.stderr
    assert snapshot(tmp_path) == before
    tally("results file of another schema version", "exit 2, names the file; it is left untouched", 2)


def test_an_unwritable_results_directory_is_refused(tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: a file where the folder should be
        (tmp_path / "rtx3050-laptop").write_text("not a directory")
    else:
        tmp_path.chmod(0o555)
    before = snapshot(tmp_path)
    try:
        result = cli(*GRID, "--seq-lens", "64", "--results-dir", str(tmp_path))
    finally:
        tmp_path.chmod(0o755)
    assert result.returncode == 2 and "cannot write results" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before
    tally("unwritable results directory", "exit 2, names the directory, nothing written", 2)


def test_a_full_disk_stops_the_sweep_and_keeps_every_recorded_row(tmp_path):
    args = [*GRID, "--seq-lens", "64,128,192", "--results-dir", str(tmp_path)]
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    # the disk fills when the third row is written (simulated ENOSPC at the write)
    result = cli(*args, env={"QLORA_BENCH_DISK_FULL_AT": "3"})
    assert result.returncode == 2 and "No space left on device" in result.stderr, result.stderr
    rows = read_rows(path)
    assert [r["seq_len"] for r in rows] == ["64", "128"]
    assert not list(path.parent.glob(".*.tmp"))  # no half-written temporary left behind
    again = cli(*args)  # space again: the rerun finishes the grid
    assert again.returncode == 0 and [r["seq_len"] for r in read_rows(path)] == ["64", "128", "192"]
    assert read_rows(path)[:2] == rows
    tally(
        "disk full while writing a row",
        "exit 2 with the OS's message; every earlier row intact; the rerun completes",
        2,
    )


def test_wandb_unreachable_costs_no_row(tmp_path):
    env = {"WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9"}
    args = GRID[:-2]  # without "--wandb off"
    result = cli(*args, "--seq-lens", "64,128", "--wandb", "online", "--results-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("W&B") == 1 and "CSV only" in result.stderr
    assert len(read_rows(tmp_path / "rtx3050-laptop" / "trials-cpu.csv")) == 2
    tally(
        "W&B online, unreachable, no key",
        "said once on stderr; W&B off, every row in the CSV",
        result.returncode,
    )


def test_nvml_unavailable_falls_back_to_torch_and_says_what_is_lost(monkeypatch, capsys):
    import pynvml
    import torch

    from bench import envinfo

    def broken():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    class Props:
        name, total_memory, major, minor = "NVIDIA T4 (fake)", 15 * 2**30, 7, 5

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props)
    host = envinfo.nvml_gpu()
    assert (host.name, host.compute_capability, host.driver) == ("NVIDIA T4 (fake)", (7, 5), "")
    err = capsys.readouterr().err
    assert "NVML unavailable" in err and "driver, nvml_process_max_gib" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # and no GPU at all: None
    assert envinfo.nvml_gpu() is None
    tally(
        "NVML unavailable (no driver library)",
        "the GPU from torch; stderr names the columns left "
        "empty (driver, NVML memory); torch's figures measured",
    )


def test_a_bands_probes_at_a_moved_cap_are_not_another_card():
    """--band probes the same card with the cap moved on purpose (purpose band_low/band_high):
    those rows must not make the next run on the same results refuse them as another card's
    (a second --band over the GTX 1650's published rows did, on the H200)."""
    from types import SimpleNamespace

    from bench.errors import BenchUsageError
    from bench.profiles import load_profile
    from bench.runner import check_recorded

    path = REPO / "results" / "gtx1650" / "boundary-trials.csv"
    rows = read_rows(path)
    cfg = SimpleNamespace(profile=load_profile("gtx1650"), axes=SimpleNamespace(values={}))
    assert {r["mem_cap_gib"] for r in rows if r["purpose"].startswith("band_")} == {"3", "3.6"}
    check_recorded(cfg, path, rows)  # the published probes, bands included, are this card's
    moved = [{**rows[0], "purpose": "search", "mem_cap_gib": "3"}]
    with pytest.raises(BenchUsageError, match="mem_cap_gib"):
        check_recorded(cfg, path, moved)  # a search at another cap is still another card


def test_a_copied_profile_under_a_shipped_name_is_not_answered_with_that_cards_rows(tmp_path):
    """results are filed by profile name: a copy of t4.yaml with less memory but the same name
    must not find the T4's rows recorded (it would report T4 numbers for an 11 GiB card)."""
    shutil.copytree(REPO / "results" / "t4", tmp_path / "results" / "t4")
    mine = tmp_path / "my-t4.yaml"
    text = (REPO / "profiles" / "t4.yaml").read_text()
    mine.write_text(
        text.replace("usable_vram_gib: 14.56", "usable_vram_gib: 11.0").replace(
            "total_vram_gib: 15.0", "total_vram_gib: 12.0"
        )
    )
    before = snapshot(tmp_path / "results")
    result = cli("--profile", str(mine), "--dry-run", "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 2, result.stdout
    assert "allocator cap (mem_cap_gib): 14.26 recorded, 10.7" in result.stderr, result.stderr
    assert snapshot(tmp_path / "results") == before
    tally(
        "copied profile keeps a shipped name, other card facts",
        "exit 2 naming what differs (cap, kernels, bf16); nothing written",
        2,
    )


@pytest.mark.parametrize("damage", ["empty", "header only", "torn", "malformed row"])
def test_damaged_results_files_stop_report_plot_and_compare_naming_the_file(tmp_path, damage):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    path = results / "t4" / "boundaries.csv"
    text = path.read_text()
    header, first, *_ = text.split("\n")
    path.write_text(
        {
            "empty": "",
            "header only": header + "\n",
            "torn": text[:-40],
            "malformed row": f"{header}\n{first},extra\n",
        }[damage]
    )
    before = snapshot(results)
    commands = [["compare", "t4", "l4"], ["report"], ["plot", "--out", str(results / "figures")]]
    for command in commands:
        result = cli(*command, "--results-dir", str(results))
        if damage == "header only":  # a file with no rows yet is valid: t4 has nothing measured
            assert "Traceback" not in result.stderr, (command, result.stderr)
            continue
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert str(path) in result.stderr and "Traceback" not in result.stderr, result.stderr
        if damage != "empty":
            assert "line" in result.stderr
        assert snapshot(results) == before, command
    if damage != "header only":
        tally(
            "damaged results file read by report / plot / compare",
            "exit 2 naming the file (and line); nothing written",
            2,
            injected=len(commands),
        )


def test_report_into_a_missing_folder_is_refused(tmp_path):
    result = cli("report", "--output", str(tmp_path / "nowhere" / "tables.md"))
    assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr
    tally("report --output into a missing folder", "exit 2 naming the path", 2)


def test_sft_resumed_with_other_settings_is_refused_before_anything_is_written(tmp_path):
    run = ["sft", "--device", "cpu", "--steps", "2", "--eval-every", "2", "--eval-samples", "1"]
    run += ["--max-new-tokens", "8", "--out", str(tmp_path / "run")]
    assert cli(*run).returncode == 0
    before = snapshot(tmp_path / "run")
    for change, named in ((["--rank", "8"], "--rank 16 then, 8 now"), (["--lr", "0.001"], "--lr 0.003 then")):
        result = cli(*run, *change)
        assert result.returncode == 2 and named in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and snapshot(tmp_path / "run") == before
        tally("sft resumed with other settings", "exit 2 naming each difference; the run untouched", 2)
    assert cli(*run, "--steps", "3").returncode == 0  # a longer run of the same settings resumes


def test_sft_into_an_unwritable_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("a file where the run's folder would be")
    result = cli("sft", "--device", "cpu", "--steps", "1", "--out", str(tmp_path / "file" / "run"))
    assert result.returncode == 2 and "cannot write the run to" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    tally("sft into an unwritable folder", "exit 2 naming the folder; nothing written", 2)


def test_a_timed_out_trial_is_retried_by_a_rerun(tmp_path):
    args = [*GRID, "--seq-lens", "64,128", "--results-dir", str(tmp_path)]
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    first = cli(*args, "--timeout", "10", env={"QLORA_BENCH_INJECT": "s=64|b=1:hang"})
    assert first.returncode == 1, first.stderr  # a timeout is a failed trial
    assert [(r["seq_len"], r["status"]) for r in read_rows(path)] == [("64", "timeout"), ("128", "ok")]
    again = cli(*args, "--timeout", "300")
    assert again.returncode == 0, again.stderr
    rows = read_rows(path)
    assert sorted((r["seq_len"], r["status"]) for r in rows) == [("128", "ok"), ("64", "ok")]
    tally(
        "trial timed out, rerun with a longer --timeout",
        "exit 1; the rerun runs that trial again and replaces its row",
        1,
    )


# the search's boundary: 960 tokens; a commit of known code (a test tree has changes), so that a
# rerun reuses the probes recorded before it was stopped
SEARCH_INJECT = {"QLORA_BENCH_INJECT": "tokens>1000:oom", "QLORA_BENCH_GIT_COMMIT": "0123abc"}


def _search_until_two_probes(args: list[str], probes: Path, stderr=subprocess.DEVNULL, env=None):
    """The boundary search started in a process group of its own, once it recorded two probes
    (mid-search: it needs more)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args], cwd=REPO, env={**os.environ, **SEARCH_INJECT, **(env or {})},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not (probes.exists() and len(read_rows(probes)) >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc


def _rerun_completes_the_search(args: list[str], probes: Path) -> None:
    """The same command run again at once: it runs, reuses every probe recorded before (the same
    commit: their rows kept as they were, none run again), and the boundary is found and verified."""
    before = read_rows(probes)
    again = cli(*args, env=SEARCH_INJECT)
    assert again.returncode == 0 and "another sweep" not in again.stderr, again.stderr
    rows = read_rows(probes)
    keys = [(r["boundary_key"], r["trial_key"], r["purpose"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    assert rows[: len(before)] == before
    last = json.loads((probes.parent / "boundary-runs-cpu.jsonl").read_text().splitlines()[-1])
    assert last["reused"] == len(before) and last["trials"] == len(rows) - len(before)
    (bound,) = read_rows(probes.with_name("boundaries-cpu.csv"))
    assert bound["max_value"] == "960" and bound["verified"] == "true"


def test_a_boundary_search_killed_and_rerun_records_each_probe_once(tmp_path):
    args = search_args(tmp_path)
    probes = tmp_path / "rtx3050-laptop" / "boundary-trials-cpu.csv"
    proc = _search_until_two_probes(args, probes)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "rtx3050-laptop" / "boundaries-cpu.csv").exists()  # killed mid-search
    _rerun_completes_the_search(args, probes)
    tally(
        "boundary search killed (SIGKILL), then rerun",
        "the rerun reuses the probes recorded (same commit), finishes the search; each probe recorded once",
        -9,
    )


def test_a_boundary_run_stopped_by_sigterm_writes_its_run_line_and_the_rerun_completes(tmp_path):
    """`timeout` and `docker stop` send SIGTERM (here to the whole process group, so the workers
    get it too and must not turn it into a failed probe): the run stops as on Ctrl-C, exit 143,
    with every probe so far recorded, its run line written (what is left for a rerun), and its
    lock released, so the same command run at once completes the search."""
    args = search_args(tmp_path)
    folder = tmp_path / "rtx3050-laptop"
    probes = folder / "boundary-trials-cpu.csv"
    proc = _search_until_two_probes(args, probes, stderr=subprocess.PIPE)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err, err
    before = read_rows(probes)
    assert before and all(r["status"] in ("ok", "oom") for r in before)  # no probe failed by it
    (log,) = folder.glob("boundary-runs*.jsonl")
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["boundaries"] + line["left"] == 1 and line["trials"] >= 2
    _rerun_completes_the_search(args, probes)
    assert len(log.read_text().splitlines()) == 2
    tally(
        "boundary run stopped by SIGTERM (as `timeout`, `docker stop`), then rerun",
        "exit 143; probes and run line recorded, the search in flight left; the rerun reuses them, ends it",
        143,
    )


def test_a_boundary_run_stopped_mid_probe_exits_at_once_and_leaves_no_worker(tmp_path):
    """Workers are spawned, not forked, when CUDA was initialised first (Unsloth does on import);
    a spawned worker ignores SIGTERM, and the interpreter's exit waits for it. Stopped while a
    probe runs (here one that would hang until the 300 s trial timeout), the run must still exit
    at once: its slots' workers killed, nothing more probed or recorded, no process left. (On
    the H200 an Unsloth band run once outlived its SIGTERM by more than 15 s, until SIGKILL.)"""
    args = search_args(tmp_path, "--timeout", "300")
    folder = tmp_path / "rtx3050-laptop"
    probes = folder / "boundary-trials-cpu.csv"
    env = {"QLORA_BENCH_INJECT": SEARCH_INJECT["QLORA_BENCH_INJECT"] + ",s=768|:hang"}
    env["QLORA_BENCH_WORKER_START"] = "spawn"  # the third probe, 768 tokens, hangs
    proc = _search_until_two_probes(args, probes, stderr=subprocess.PIPE, env=env)
    time.sleep(2)
    before = read_rows(probes)
    _stops_at_once(proc, os.killpg)
    assert read_rows(probes) == before and len(before) == 2
    (line,) = [json.loads(x) for x in (folder / "boundary-runs-cpu.jsonl").read_text().splitlines()]
    assert line["boundaries"] == 0 and line["left"] == 1 and line["trials"] == 2
    _leaves_no_process(proc.pid)
    tally(
        "boundary run stopped by SIGTERM mid-probe, its workers spawned",
        "exit 143 at once; the probe in flight killed, nothing after it run or recorded; no process left",
        143,
    )


def test_a_boundary_run_on_a_dask_cluster_stopped_mid_search_exits_and_its_rerun_ends_it(tmp_path):
    """`boundary --scheduler local`: a group's rows are written here when its task ends, so a run
    stopped mid-search records none of its probes. Stopped by SIGTERM to the main process alone
    (as `docker stop` sends it) while a probe hangs, it must still exit at once, close its
    cluster (the worker running the probe included), leave no process, and its rerun find the
    boundary."""
    pytest.importorskip("distributed")
    args = search_args(tmp_path, "--timeout", "300", "--scheduler", "local")
    folder = tmp_path / "rtx3050-laptop"
    env = {**os.environ, **SEARCH_INJECT, "QLORA_BENCH_WORKER_START": "spawn"}
    env["QLORA_BENCH_INJECT"] += ",s=768|:hang"  # the third probe, 768 tokens, hangs
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while _group_size(proc.pid) < 3 and time.monotonic() < deadline:  # the cluster's workers are up
        time.sleep(0.5)
    time.sleep(20)  # the search unhindered takes under 10 s here: its probe at 768 hangs by now
    _stops_at_once(proc, os.kill)  # the main process alone
    (line,) = [json.loads(x) for x in (folder / "boundary-runs-cpu.jsonl").read_text().splitlines()]
    assert line["boundaries"] == 0 and line["left"] == 1 and line["trials"] == 0
    assert not (folder / "boundaries-cpu.csv").exists() or not read_rows(folder / "boundaries-cpu.csv")
    _leaves_no_process(proc.pid)
    again = cli(*args, env={**SEARCH_INJECT, "QLORA_BENCH_WORKER_START": "spawn"})
    assert again.returncode == 0, again.stderr
    (bound,) = read_rows(folder / "boundaries-cpu.csv")
    assert bound["max_value"] == "960" and bound["verified"] == "true"
    tally(
        "boundary run on a local Dask cluster stopped by SIGTERM mid-search, then rerun",
        "exit 143 at once, the cluster closed (the hanging probe's worker killed), no process left; "
        "the group's probes, written when its task ends, not recorded; the rerun finds the boundary",
        143,
    )


def _stops_at_once(proc: subprocess.Popen, kill) -> None:
    """SIGTERM by `kill` (os.killpg: the run's whole group, as `timeout` and Ctrl-C send it;
    os.kill: its main process alone, as `docker stop`): the run exits 143 within 30 s, saying so."""
    started = time.monotonic()
    kill(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # it did not stop: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - started
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err, err
    assert took < 30, f"exit {took:.0f} s after SIGTERM"


def _leaves_no_process(pgid: int) -> None:
    """No process of the stopped run's group is left within 10 s (its killed workers, reaped)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError("a process of the run outlived it")


def _group_size(pgid: int) -> int:
    """Processes in the process group `pgid`, from /proc (a zombie counts until it is reaped)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        except OSError:  # the process ended meanwhile
            continue
        count += int(fields[2]) == pgid
    return count


def test_the_main_process_killed_alone_leaves_no_lock_and_no_worker_behind(tmp_path):
    """The OOM killer takes one process, not the group: the sweep's workers must die with it (they
    ask Linux for SIGKILL when their parent goes) and the results lock with it, so a rerun started
    at once runs."""
    args = [*GRID, "--seq-lens", ",".join(str(64 * i) for i in range(1, 21)), "--results-dir", str(tmp_path)]
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args], cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not (path.exists() and read_rows(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    before = read_rows(path)
    os.kill(proc.pid, signal.SIGKILL)  # the main process alone
    proc.wait()
    again = cli(*args)
    assert again.returncode == 0 and "another sweep" not in again.stderr, again.stderr
    rows = read_rows(path)
    assert rows[: len(before)] == before and len({r["trial_key"] for r in rows}) == len(rows) == 20
    tally(
        "sweep's main process alone killed (SIGKILL, as the OOM killer), rerun at once",
        "its workers die with it, the lock with it; the rerun completes the grid",
        -9,
    )


def test_compare_outside_the_repository_finds_the_published_results(tmp_path):
    result = cli("compare", "t4", "l4", "--model", "qwen2.5-7b", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0 and "5696" in result.stdout, result.stderr  # l4's measured boundary
    tally("compare run outside the repository", "the published results are found; --results-dir overrides", 0)


def test_report_and_plot_with_only_cpu_rows_say_so(tmp_path):
    folder = tmp_path / "rtx3050-laptop"
    folder.mkdir()
    shutil.copy(REPO / "results" / "rtx3050-laptop" / "boundaries.csv", folder / "boundaries-cpu.csv")
    before = snapshot(tmp_path)
    for command in (["report"], ["plot"]):
        result = cli(*command, "--results-dir", str(tmp_path))
        assert result.returncode == 2 and "only CPU test runs" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before
    tally(
        "report / plot with only CPU test rows",
        "exit 2: nothing to publish, the CPU files named",
        2,
        injected=2,
    )


def test_the_schema_table_escapes_pipes():
    result = cli("schema")
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert rows and all(line.replace("\\|", "").count("|") == 3 for line in rows)
    assert any("\\|" in line for line in rows)  # status: ok | oom | ...
    tally("a pipe character in a column's meaning (schema table)", "escaped: every row has its two cells", 0)


def render() -> str:
    lines = [
        "| fault | injected | outcome | rows lost | rows doubled | exit code |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for fault in ORDER:
        o = OUTCOMES[fault]
        codes = ", ".join(str(c) for c in sorted(o["exit"])) or "-"
        lines.append(
            f"| {fault} | {o['injected']} | {o['outcome']} | {o['lost']} | {o['doubled']} | {codes} |"
        )
    return "\n".join(lines)


BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def test_the_reliability_table_is_this_suites_output():
    missing = [f for f in ORDER if f not in OUTCOMES]
    if missing:
        pytest.skip(f"the whole suite did not run (missing: {missing[:3]}...)")
    readme = REPO / "docs" / "reliability.md"
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    table = render()
    if os.environ.get("QLORA_BENCH_WRITE_FAULT_TABLE"):
        readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    assert f"{BEGIN}\n{table}\n{END}" in readme.read_text()
