"""Profile and catalogue validation: every shipped file is valid; bad files are refused clearly."""

import pytest
import yaml

from bench.catalog import load_catalog
from bench.errors import BenchUsageError, ValidationError
from bench.profiles import available_profiles, load_profile

DESIGN_CARD_PROFILES = ["gtx1650", "rtx3050-laptop", "rtx3070", "t4", "l4"]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.mark.parametrize("name", DESIGN_CARD_PROFILES)
def test_design_card_profiles_exist(name, catalog):
    assert load_profile(name, set(catalog)).name == name


def test_rtx3050_alias_and_grid(catalog):
    profile = load_profile("rtx3050", set(catalog))
    assert profile.name == "rtx3050-laptop"
    grid = profile.grid
    assert "qwen2.5-0.5b" in grid.models and 512 in grid.seq_lens and 1 in grid.batch_sizes
    assert 8 in grid.lora_ranks and "fp16" in grid.dtypes


def test_catalogue_has_design_card_models(catalog):
    for name in [
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-3b",
        "llama-3.2-1b",
        "llama-3.2-3b",
        "tinyllama-1.1b",
        "llama-3.1-8b",
        "qwen2.5-7b",
        "tiny",
    ]:
        assert name in catalog
    assert catalog["qwen2.5-0.5b"].hub_id == "Qwen/Qwen2.5-0.5B"


@pytest.mark.torch
def test_catalogue_configs_build_real_sizes(catalog):
    """Parameter counts from the config values match the published model sizes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    expected = {"qwen2.5-0.5b": 494e6, "llama-3.2-1b": 1.236e9, "tinyllama-1.1b": 1.1e9}
    for name, count in expected.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**catalog[name].config))
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - count) / count < 0.01, (name, n)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(BenchUsageError, match="unknown profile 'rtx9090'.*rtx3050-laptop"):
        load_profile("rtx9090")


def _write(tmp_path, data):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_malformed_profile_reports_every_field(tmp_path, catalog):
    data = yaml.safe_load(open(available_profiles()["t4"]))
    data["gpu"]["usable_vram_gib"] = "lots"
    data["gpu"]["native_bf16"] = True  # T4 is 7.5: contradiction
    del data["gpu"]["memory_bandwidth_gbps"]
    data["grid"]["seq_lens"] = [512, -1]
    data["grid"]["models"] = ["gpt-5"]
    path = _write(tmp_path, data)
    with pytest.raises(ValidationError) as info:
        load_profile(str(path), set(catalog))
    text = str(info.value)
    assert str(path) in text
    for field in [
        "gpu.usable_vram_gib",
        "gpu.native_bf16",
        "gpu.memory_bandwidth_gbps",
        "grid.seq_lens",
        "grid.models",
    ]:
        assert field in text, field


def test_user_profile_path_loads(tmp_path, catalog):
    data = yaml.safe_load(open(available_profiles()["rtx3070"]))
    data["name"] = "my-card"
    profile = load_profile(str(_write(tmp_path, data)), set(catalog))
    assert profile.name == "my-card"


def test_unparseable_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValidationError, match="broken.yaml"):
        load_profile(str(path))
