"""A tiny model and tokenizer for CPU runs, built locally: a 2-layer Llama with random weights
and a byte-level BPE tokenizer trained on the task's own text. No hub, no download."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from bench.paths import cache_dir

VOCAB = 512


def build_tiny(config: dict, texts: list[str], seed: int = 0) -> Path:
    """Directory with config, random weights and tokenizer; cached by config and corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    digest = hashlib.sha256((json.dumps(config, sort_keys=True) + "".join(texts[:200])).encode()).hexdigest()[
        :12
    ]
    final = cache_dir() / "tiny-sft" / digest
    if (final / "tokenizer.json").exists():
        return final
    tmp = final.with_name(f".{digest}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    cfg = AutoConfig.for_model(
        **{
            **config,
            "vocab_size": len(fast),
            "bos_token_id": fast.bos_token_id,
            "eos_token_id": fast.eos_token_id,
            "pad_token_id": fast.pad_token_id,
        }
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp)
    fast.save_pretrained(tmp)
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
