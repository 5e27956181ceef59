"""Fixtures of the ``npcrl serve`` tests (helpers: tests/serve_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from serve_helpers import ShortPromptState, tiny_config  # noqa: E402

from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.playlog.writer import PlayLogWriter  # noqa: E402
from npcrl.runtime.session import SessionOptions  # noqa: E402
from npcrl.serve.loading import ModelSource  # noqa: E402
from npcrl.serve.state import ServerState  # noqa: E402


@pytest.fixture
def make_state(tiny_bundle: Path, tmp_path: Path) -> Callable[..., ServerState]:
    """``make_state(source=None, kv_slots=8)``: a server state on the tiny bundle, logging to ``tmp_path / "logs"``."""

    def make(source: ModelSource | None = None, kv_slots: int = 8) -> ServerState:
        source = source or ModelSource(bundle=tiny_bundle, options=SessionOptions(kv_slots=kv_slots))
        return ShortPromptState(PlayLogWriter(tmp_path / "logs"), builtin_personas(), source, tiny_config())

    return make
