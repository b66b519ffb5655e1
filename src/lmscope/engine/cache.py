"""Where lmscope keeps what it makes once: converted models, atlases (torch-free, so that
reading a cached atlas never waits for torch)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models and other lmscope caches live (`$LMSCOPE_CACHE` overrides)."""
    env = os.environ.get("LMSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmscope"
