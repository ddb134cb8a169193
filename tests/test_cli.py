"""The CLI as a user calls it: exit codes, messages, and nothing written on bad input."""

import pytest
from conftest import cli


def _has_gpu():
    from bench.envinfo import nvml_gpu

    return nvml_gpu() is not None


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_no_gpu_says_so_and_exits_2(tmp_path):
    result = cli("--profile", "rtx3050", "--results-dir", str(tmp_path))
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "rtx9090"], "unknown profile 'rtx9090'"),
        (["--profile", "t4", "--models", "gpt-5"], "unknown model(s) ['gpt-5']"),
        (["--profile", "t4", "--seq-lens", "0,512"], "must be > 0"),
        (["--profile", "t4", "--ranks", "-8"], "must be > 0"),
        (["--profile", "t4", "--batch-sizes", "two"], "whole numbers"),
        (["--profile", "t4", "--dtypes", "fp8"], "unknown ['fp8']"),
        (["--profile", "t4", "--weights", "/nonexistent/model"], "not in the Hugging Face cache"),
        (["--profile", "does/not/exist.yaml"], "profile file not found"),
        (["boundary", "--profile", "gtx1650", "--band", "4"], "--band 4: not below gtx1650's"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    result = cli(*args, "--device", "cpu", "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "results").exists()


def test_malformed_profile_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ngpu: {usable_vram_gib: -3}\ngrid: {}\n")
    result = cli("--profile", str(path), "--device", "cpu", "--results-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "gpu.usable_vram_gib" in result.stderr
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path):
    result = cli("--profile", "t4", "--device", "cpu", "--dry-run", "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "unsupported" in result.stdout and "tiny" in result.stdout
    assert not any(tmp_path.iterdir())


def test_profiles_and_schema_commands():
    listed = cli("profiles")
    assert listed.returncode == 0 and "rtx3050-laptop" in listed.stdout
    schema = cli("schema")
    assert schema.returncode == 0 and "peak_reserved_gib" in schema.stdout


@pytest.mark.torch
def test_seq_len_past_the_model_context_is_unsupported(tmp_path):
    result = cli(
        "--profile",
        "t4",
        "--device",
        "cpu",
        "--seq-lens",
        "8192",
        "--dtypes",
        "fp16",
        "--ranks",
        "4",
        "--batch-sizes",
        "1",
        "--grad-ckpt",
        "off",
        "--results-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "t4" / "trials-cpu.csv").read_text()
    assert ",unsupported," in text and "past tiny's context of 4096" in text
