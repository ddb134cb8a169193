"""Where the data files live. Profiles and the model catalogue are data in the repository."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def profiles_dir() -> Path:
    return Path(os.environ.get("QLORA_BENCH_PROFILES_DIR", REPO_ROOT / "profiles"))


def cache_dir() -> Path:
    """Random-weight checkpoints built from catalogue configs (rebuilt on demand, never committed)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qlora-bench"
    return Path(os.environ.get("QLORA_BENCH_CACHE", default))
