"""Where npcrl keeps its files: the per-user cache (fetched models, exported bundles)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def user_cache_dir() -> Path:
    """The npcrl cache directory; ``NPCRL_CACHE_DIR`` overrides the platform default."""
    override = os.environ.get("NPCRL_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "npcrl"


def default_model_dir() -> Path:
    """The HF directory that ``npcrl model fetch`` writes SmolLM2-135M-Instruct to."""
    return user_cache_dir() / "models" / "SmolLM2-135M-Instruct"


def default_bundle_dir(quant: str = "q8") -> Path:
    """Where the default model's exported bundle lives unless told otherwise."""
    return user_cache_dir() / "bundles" / f"SmolLM2-135M-Instruct-{quant}"
