"""Where npcrl keeps its files: the per-user cache (fetched models, exported bundles) and the
per-user data directory (the key that pseudonymises player ids in play logs)."""

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


def user_data_dir() -> Path:
    """The npcrl data directory, for files that must outlive a cleared cache (the pseudonym key)."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "npcrl"


def default_key_path() -> Path:
    """The key file that pseudonymises player ids: ``NPCRL_KEY_FILE``, else ``pseudonym.key`` in
    the user data directory. Never beside the play logs, so that a copy of the logs is no key."""
    override = os.environ.get("NPCRL_KEY_FILE")
    if override:
        return Path(override).expanduser()
    return user_data_dir() / "pseudonym.key"
