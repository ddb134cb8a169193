"""The per-kernel projection's arithmetic, on hand-made profiled steps (no GPU, no torch)."""

import csv

import pytest

from analysis.kernel_projection import LATENCY_S, KernelProjection, _interpolate, card_rates
from bench.kernels import FIELDS
from bench.profiles import load_profile


def write(path, points):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
        writer.writeheader()
        for seq, classes, step in points:
            base = dict(model="qwen2.5-0.5b", seq_len=seq, batch_size=1, dtype="bf16", grad_ckpt="True",
                        recipe="peft", lora_rank=16)  # fmt: skip
            for name, values in classes.items():
                writer.writerow({**base, "class": name, **values})
            writer.writerow({**base, "class": "step", **step})


@pytest.fixture
def kernels_dir(tmp_path):
    write(
        tmp_path / "h200.csv",
        [
            (512, {"gemm": dict(kernels=1000, gpu_ms=4.0, flops=1e12, bytes=0),
                   "elementwise": dict(kernels=3000, gpu_ms=6.0, flops=0, bytes=4.0e9)},
             dict(kernels=4000, wall_ms=40.0, busy_ms=10.0)),
            (2048, {"gemm": dict(kernels=1000, gpu_ms=16.0, flops=4e12, bytes=0),
                    "elementwise": dict(kernels=3000, gpu_ms=12.0, flops=0, bytes=16.0e9)},
             dict(kernels=4000, wall_ms=41.0, busy_ms=28.0)),
        ],
    )  # fmt: skip
    with open(tmp_path / "rates.csv", "w") as handle:
        handle.write(
            "rate,size,value,unit\ngemm-bf16,8192,800,TFLOPS\ngemm-fp16,8192,760,TFLOPS\ncopy,1,4000,GB/s\n"
        )
    return tmp_path


def test_interpolate():
    assert _interpolate([(512, 1.0), (2048, 4.0)], 1024) == pytest.approx(2.0)
    assert (
        _interpolate([(512, 1.0)], 1024) == 2.0
        and _interpolate([(512, 1.0)], 1024, proportional=False) == 1.0
    )
    assert _interpolate([(512, 4.0), (2048, 1.0)], 100000) == 0.0  # never below zero


def test_card_rates_cited_measured_here_and_by_rule(kernels_dir):
    t4 = card_rates(load_profile("t4"), "fp16", kernels_dir)
    assert (t4.gemm_tflops, t4.copy_gbps, t4.source) == (42.3, 240.0, "measured / measured")
    h200 = card_rates(load_profile("h200"), "bf16", kernels_dir)
    assert (h200.gemm_tflops, h200.copy_gbps) == (800.0, 4000.0) and h200.source.startswith("measured here")
    l4 = card_rates(load_profile("l4"), "bf16", kernels_dir)
    assert l4.source == "rule / rule" and 0 < l4.gemm_tflops < 121 and 0 < l4.copy_gbps < 300


def test_projection_per_class(kernels_dir):
    projection = KernelProjection(kernels_dir)
    assert projection.launch_ms == pytest.approx(40.0 / 4000)  # the GPU-idle point's wall per kernel
    # elementwise on the H200: 4e9 B / 4000 GB/s = 1 ms of 6, and 4 ms of 12: median share 0.25
    assert projection.efficiency["elementwise"] == pytest.approx((1 / 6 + 4 / 12) / 2)
    t4 = load_profile("t4")
    got = projection.step_ms(t4, "qwen2.5-0.5b", 1024, 1, True, "fp16")
    gemm = 8.0 * 800 / 42.3  # the H200's 8 ms at 1024 tokens, at the T4's sustained rate
    elementwise = max(3000 * LATENCY_S * 1000, 8e9 / (240e9 * projection.efficiency["elementwise"]) * 1000)
    assert got == pytest.approx(max(4000 * projection.launch_ms, gemm + elementwise))
    assert projection.step_ms(t4, "llama-3.2-1b", 1024, 1, True, "fp16") is None  # not profiled


def test_host_validation_leaves_the_profiled_points_out(kernels_dir, tmp_path):
    (kernels_dir / "h200.csv").rename(kernels_dir / "t4.csv")  # steps profiled with the T4's kernels
    trials = tmp_path / "results" / "t4" / "trials.csv"
    trials.parent.mkdir(parents=True)
    columns = "model,seq_len,batch_size,dtype,grad_ckpt,recipe,status,step_time_p50_s"
    rows = ["qwen2.5-0.5b,512,1,bf16,True,peft,ok,0.041", "qwen2.5-0.5b,1024,1,bf16,True,peft,ok,0.050",
            "qwen2.5-0.5b,1024,1,bf16,True,peft,oom,", "qwen2.5-7b,1024,1,bf16,True,peft,ok,0.5"]  # fmt: skip
    trials.write_text("\n".join([columns, *rows]) + "\n")
    from analysis.kernel_projection import host_validation

    (checked,) = host_validation(tmp_path / "results", kernels_dir)
    assert (checked["kernels"], checked["seq_len"], checked["measured_ms"]) == ("t4", 1024, 50.0)
    assert checked["error"] == pytest.approx(checked["projected_ms"] / 50.0 - 1)


def test_native_validation_checks_the_projection_against_verify_rows_run_on_the_card(kernels_dir, tmp_path):
    """`verify` on a real T4 writes native rows with step times: the projection for the t4 profile
    is checked against them; emulated, failed and the H200's own rows are left out."""
    from analysis.kernel_projection import native_validation
    from analysis.kernel_report import _native

    results = tmp_path / "results"
    assert _native(results, kernels_dir)[0].startswith("None yet")  # no real card has run verify
    columns = "model,seq_len,batch_size,dtype,grad_ckpt,recipe,status,emulated,step_time_p50_s,gpu_name"
    columns += ",driver"
    for profile, rows in (
        ("t4", ["qwen2.5-0.5b,1024,1,fp16,True,peft,ok,false,0.9,Tesla T4,550.54",
                "qwen2.5-0.5b,1088,1,fp16,True,peft,oom,false,,Tesla T4,550.54",
                "qwen2.5-0.5b,1024,1,fp16,True,peft,ok,true,0.1,NVIDIA H200,580.159.04"]),
        ("h200", ["qwen2.5-0.5b,1024,1,bf16,True,peft,ok,false,0.05,NVIDIA H200,580.159.04"]),
    ):  # fmt: skip
        (results / profile).mkdir(parents=True)
        (results / profile / "verify.csv").write_text("\n".join([columns, *rows]) + "\n")
    (checked,) = native_validation(results, kernels_dir)
    t4 = load_profile("t4")
    projected = KernelProjection(kernels_dir).step_ms(t4, "qwen2.5-0.5b", 1024, 1, True, "fp16")
    assert (checked["profile"], checked["gpu"], checked["measured_ms"]) == ("t4", "Tesla T4", 900.0)
    assert checked["projected_ms"] == pytest.approx(projected)
    assert checked["error"] == pytest.approx(projected / 900.0 - 1)
    table = "\n".join(_native(results, kernels_dir))
    assert "| t4 (Tesla T4, 550.54) | qwen2.5-0.5b | 1024 x 1, fp16, ckpt, peft | 900 /" in table
    assert "of 1 steps" in table


def test_attention_grows_with_the_length_squared_and_cards_take_their_attention_kernels(kernels_dir):
    """Attention's time interpolates in batch x length^2 (the rest in tokens): 1 ms at 512 and
    16 ms at 2048 (x16) project to 4 ms at 1024 x 1 but 2 ms at 512 x 2 (same tokens). A card
    without FlashAttention takes the T4's profiled steps, one with it the H200's; a step of the
    other half precision stands in when its own is not profiled."""
    import shutil

    rows = list(csv.DictReader(open(kernels_dir / "h200.csv")))
    for seq, ms in ((512, 1.0), (2048, 16.0)):
        step = next(r for r in rows if r["class"] == "step" and r["seq_len"] == str(seq))
        rows.insert(rows.index(step), {**step, "class": "attention", "kernels": "10", "gpu_ms": str(ms)})
    with open(kernels_dir / "h200.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(kernels_dir / "h200.csv", kernels_dir / "t4.csv")
    projection = KernelProjection(kernels_dir)
    h200 = projection.host
    long, wide = (
        projection.step_parts(h200, "qwen2.5-0.5b", s, b, True, "bf16") for s, b in ((1024, 1), (512, 2))
    )
    assert long[1] - wide[1] == pytest.approx(4.0 - 2.0)
    assert projection.kernel_set(load_profile("gtx1650")) == "t4"
    assert projection.kernel_set(load_profile("rtx3070")) == "h200"
    assert projection.step_ms(load_profile("rtx3070"), "qwen2.5-0.5b", 512, 1, True, "fp16") is not None
