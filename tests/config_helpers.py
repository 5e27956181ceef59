"""Shared checks for the loaders of the project's TOML files (training config, reward spec,
persona cards): a bad file is refused with an error that names the file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def load_error(
    load: Callable[[Path], Any], path: Path, error: type[Exception], *fragments: str, match: str | None = None
) -> str:
    """Load ``path`` expecting ``error`` whose message names the file, holds every fragment and, with
    ``match``, matches that regular expression; returns the message."""
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    if match is not None:
        assert re.search(match, message), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def write_train_config(tmp_path: Path, text: str) -> Path:
    """``text`` written as ``train.toml`` under ``tmp_path``."""
    path = tmp_path / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


def train_config_error(tmp_path: Path, text: str, match: str) -> str:
    """A training config holding ``text`` is refused with a message matching ``match``."""
    from npcrl.errors import TrainConfigError
    from npcrl.train.config import load_train_config

    return load_error(load_train_config, write_train_config(tmp_path, text), TrainConfigError, match=match)
