"""Which GPU stands in for which, and what is capped or refused (no GPU needed)."""

import pytest

from bench.catalog import load_catalog
from bench.emulation import plan, unsupported_reason
from bench.envinfo import HostGPU
from bench.errors import BenchUsageError
from bench.profiles import available_profiles, load_profile

H200 = HostGPU("NVIDIA H200", 140.4, (9, 0), "580.159.04")
T4 = HostGPU("Tesla T4", 15.0, (7, 5), "535")
RTX3060TI = HostGPU("NVIDIA GeForce RTX 3060 Ti", 8.0, (8, 6), "560")


def profile(name):
    return load_profile(name, set(load_catalog()))


@pytest.mark.parametrize("name", sorted({p.stem for p in available_profiles().values()}))
def test_every_shipped_profile_is_valid(name):
    gpu = profile(name).gpu
    assert 0 < gpu.allocator_cap_gib < gpu.usable_vram_gib <= gpu.total_vram_gib
    assert gpu.native_bf16 == (gpu.compute_capability >= (8, 0))


def test_small_card_is_emulated_on_the_h200_with_its_cap_and_kernels():
    p = plan(profile("rtx3050"), "cuda", H200)
    assert p.emulated and p.host_gpu == "NVIDIA H200"
    assert p.cap_gib == pytest.approx(3.45 - 0.3)
    assert p.sdpa_backends == ("efficient", "math")  # Windows wheels: no flash


def test_the_h200_profile_runs_natively_on_the_h200():
    p = plan(profile("h200"), "cuda", H200)
    assert not p.emulated and p.cap_gib is None


def test_the_card_itself_is_not_emulated():
    p = plan(profile("t4"), "cuda", T4)
    assert not p.emulated and p.cap_gib is None


def test_a_similar_name_with_other_memory_is_not_the_card():
    with pytest.raises(BenchUsageError, match="host GPU must be at least as large"):
        plan(profile("rtx3060-12gb"), "cuda", RTX3060TI)


def test_a_host_without_the_targets_kernels_is_refused():
    with pytest.raises(BenchUsageError, match="lacks the target's kernels"):
        plan(profile("rtx3050"), "cuda", T4)


def test_no_gpu_is_refused_with_the_cpu_hint():
    with pytest.raises(BenchUsageError, match="--device cpu"):
        plan(profile("t4"), "cuda", None)


def test_bf16_is_gated_on_compute_capability_not_on_torch():
    assert "7.5" in unsupported_reason("bf16", profile("t4"), H200, "cuda")
    assert unsupported_reason("bf16", profile("l4"), H200, "cuda") is None
    assert unsupported_reason("fp16", profile("t4"), H200, "cuda") is None
