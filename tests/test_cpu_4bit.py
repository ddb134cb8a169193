"""Gradients through the frozen NF4 layers on the CPU are right: the LoRA adapters of the first
layer (whose gradient crosses every later 4-bit layer) get the gradient of the same model with
each 4-bit weight dequantised into a plain linear layer, also after an evaluation (which makes
bitsandbytes repack the weights for an inference kernel without a backward; bench.qlora
restores them). CPU curves depend on it (issue 21)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch


def test_lora_gradients_through_cpu_nf4_layers_match_a_dequantised_reference():
    import bitsandbytes as bnb
    import torch
    from torch import nn

    from bench.catalog import load_catalog
    from bench.qlora import load_qlora_model, random_weights_dir, restore_cpu_4bit_layout

    config = load_catalog()["tiny"].config
    source = random_weights_dir("tiny", config, "cpu")
    torch.manual_seed(0)
    model = load_qlora_model(
        str(source), "cpu", dtype="fp32", grad_ckpt=False, lora_rank=8, lora_alpha=16, lora_dropout=0.0
    )
    for name, param in model.named_parameters():  # LoRA B starts at zero: no gradient reaches A
        if "lora_B" in name:
            nn.init.normal_(param, std=0.02)
    tokens = torch.randint(0, config["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1))

    def first_layer_grads():
        model.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=tokens).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n}

    quantised = first_layer_grads()
    dequantised = {  # each 4-bit base weight, as loaded
        id(m): bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    model.eval()  # an evaluation: bitsandbytes may repack the 4-bit weights for its CPU kernel
    with torch.no_grad():
        model(input_ids=tokens[:1, :4])
    packed = sum(
        bool(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )
    model.train()
    if packed:  # this CPU has the AVX512-BF16 kernel: training now loses the frozen layers' gradient
        lost = first_layer_grads()
        assert any(not torch.allclose(lost[n], quantised[n], rtol=1e-3, atol=1e-6) for n in lost)
    assert restore_cpu_4bit_layout(model) == packed
    torch.testing.assert_close(first_layer_grads(), quantised)  # restored: the same gradients
    count = 0
    for module in list(model.modules()):  # the same model with every 4-bit base weight dequantised
        base = getattr(module, "base_layer", None)
        if isinstance(base, bnb.nn.Linear4bit):
            weight = dequantised[id(base)]
            plain = nn.Linear(weight.shape[1], weight.shape[0], bias=base.bias is not None)
            plain.weight.data.copy_(weight)
            if base.bias is not None:
                plain.bias.data.copy_(base.bias.data.float())
            plain.weight.requires_grad_(False)
            module.base_layer = plain
            count += 1
    assert count >= 7 * config["num_hidden_layers"]
    reference = first_layer_grads()
    assert quantised.keys() == reference.keys() and quantised
    for name, grad in quantised.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, reference[name], rtol=1e-3, atol=1e-6, msg=name)


def test_a_random_weight_checkpoint_being_built_is_waited_for_not_built_again(tmp_path):
    """Runs started together on one host build each checkpoint once: a second waits on the first's
    lock and then uses its checkpoint, instead of writing a copy of its own (on the H200 several
    copies of a 7B model filled the disk)."""
    import fcntl
    import json
    import os
    import subprocess
    import sys
    import time

    from bench.catalog import load_catalog

    config = load_catalog()["tiny"].config
    digest = __import__("hashlib").sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    final = tmp_path / "random-weights" / f"tiny-{digest}"
    final.parent.mkdir(parents=True)
    code = "from bench.catalog import load_catalog; from bench.qlora import random_weights_dir; "
    code += "print(random_weights_dir('tiny', load_catalog()['tiny'].config, 'cpu'))"
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a first run building it
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env={**os.environ, "QLORA_BENCH_CACHE": str(tmp_path)},
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(5)
        assert proc.poll() is None and not list(final.parent.glob("*.tmp"))  # waits, builds nothing
        final.mkdir()
        (final / "config.json").write_text("{}")  # the first run's checkpoint
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == str(final)
    assert not list(final.parent.glob("*.tmp")) and os.listdir(final) == ["config.json"]
