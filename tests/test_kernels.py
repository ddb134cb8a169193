"""`qlora-bench kernels`: the kernel classes, and a profiled step of the tiny model on the CPU."""

import csv

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.kernels import CLASSES, kernel_class


@pytest.mark.parametrize(
    "kernel, ops, flops, expected",
    [
        ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNT", ["aten::mm", "aten::matmul"], 1e9, "gemm"),
        ("sm90_xmma_gemm_f16f16_f16f32", ["aten::addmm"], 0, "gemm"),
        ("void kDequantizeBlockwise<__half, 512, 64, 8, 2>", ["bitsandbytes::dequantize_4bit"], 0, "dequant"),
        (
            "flash_fwd_kernel",
            ["aten::_flash_attention_forward", "aten::scaled_dot_product_attention"],
            0,
            "attention",
        ),
        (
            "ampere_fp16_s16816gemm",
            ["aten::bmm", "aten::_scaled_dot_product_attention_math"],
            1e6,
            "attention",
        ),
        (
            "void at::native::cunn_SoftMaxForward",
            ["aten::_log_softmax", "aten::cross_entropy_loss"],
            0,
            "loss",
        ),
        ("multi_tensor_apply_kernel", ["aten::_foreach_add_", "Optimizer.step#AdamW.step"], 0, "optimizer"),
        ("elementwise_kernel", ["aten::mul", "aten::rms_norm"], 0, "elementwise"),
    ],
)
def test_kernel_class(kernel, ops, flops, expected):
    assert kernel_class(kernel, ops, flops) == expected


@pytest.mark.torch
def test_kernels_on_cpu(tmp_path):
    out = tmp_path / "k.csv"
    args = ["kernels", "--profile", "rtx3050-laptop", "--device", "cpu", "--models", "tiny",
            "--seq-lens", "64", "--batch-sizes", "1", "--ranks", "8", "--dtypes", "bf16",
            "--grad-ckpt", "on", "--profile-steps", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    classes = [r["class"] for r in rows]
    assert classes[-1] == "step" and {"gemm", "dequant", "loss", "optimizer"} <= set(classes)
    assert set(classes[:-1]) <= set(CLASSES)
    step = rows[-1]
    assert float(step["wall_ms"]) > 0 and float(step["busy_ms"]) > 0
    gemm = next(r for r in rows if r["class"] == "gemm")
    assert float(gemm["flops"]) > 0 and gemm["model"] == "tiny" and gemm["emulated"] == "False"

    again = CliRunner().invoke(main, args)  # resumes: the point is profiled already
    assert again.exit_code == 0 and "profiled already" in again.output
    assert len(list(csv.DictReader(out.open()))) == len(rows)


def test_kernels_refuses_trl():
    result = CliRunner().invoke(main, ["kernels", "--profile", "t4", "--recipe", "trl"])
    assert result.exit_code == 2 and "trl" in result.output


def test_bytes_without_dtypes():
    """torch 2.11 (the GPU host's) keeps no input dtypes in its profiler events: 2 bytes each."""
    from types import SimpleNamespace

    from bench.kernels import _bytes

    old = SimpleNamespace(input_shapes=[[4, 8], [8], []])
    assert _bytes(old) == (32 * 2 + 8 * 2) + 32 * 2
    new = SimpleNamespace(input_shapes=[[4, 8], [8]], input_dtypes=["float", "c10::BFloat16"])
    assert _bytes(new) == (32 * 4 + 8 * 2) + 32 * 4
