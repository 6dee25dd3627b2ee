"""Where tagsmith keeps its own files: the cache folder for embeddings and vocabulary indexes."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TAGSMITH_CACHE_DIR"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tagsmith", appauthor=False))


def resolve_cache_dir(explicit: Path | str | None = None) -> Path:
    """``explicit`` (``--cache-dir``), else ``$TAGSMITH_CACHE_DIR``, else the platform dir."""
    if explicit is not None and str(explicit).strip():
        return Path(explicit).expanduser()
    return default_cache_dir()
