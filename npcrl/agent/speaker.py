"""What a conversation needs from its NPC, and from the play log it writes to.

Protocols, so that a conversation depends on neither ``NpcAgent`` nor ``PlayLogWriter``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from npcrl.agent.config import AgentConfig
from npcrl.agent.persona import Persona
from npcrl.agent.safety import OutputFilter
from npcrl.playlog import Record
from npcrl.runtime.kvcache import KVCache
from npcrl.runtime.model import OnnxCausalLM


class RecordSink(Protocol):
    """Where an agent logs: a ``PlayLogWriter``, or anything that takes records the same way.

    A sink may also offer ``hold() -> release``, as ``PlayLogWriter`` does: a turn takes a hold
    while it generates, so a ``close()`` meanwhile waits for the turn's record instead of refusing it."""

    def append(self, record: Record) -> None: ...


class Speaker(Protocol):
    """The NPC side of a conversation (an ``NpcAgent``)."""

    model: OnnxCausalLM
    persona: Persona
    config: AgentConfig
    npc_id: str
    output_filter: OutputFilter
    system_prompt: str
    log_writer: RecordSink | None

    def prefix_cache(self, model: OnnxCausalLM) -> KVCache | None: ...


def hold_sink(sink: RecordSink | None) -> Callable[[], None]:
    """Take ``sink``'s hold if it offers one; returns the release, which acts on its first call
    only (and does nothing for a sink without a hold)."""
    hold = getattr(sink, "hold", None)
    release = hold() if callable(hold) else None
    if not callable(release):
        return lambda: None
    once = threading.Lock()

    def release_once() -> None:
        if once.acquire(blocking=False):
            release()

    return release_once
