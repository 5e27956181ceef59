"""The NPC agent: personas, conversations and their memory, the safety filter, post-processing of
lines, and what of the player's words reaches a log."""

from __future__ import annotations

from npcrl.agent.npc_agent import (
    BUILTIN_EVENTS,
    DEFAULT_STOPS,
    AgentConfig,
    Conversation,
    NpcAgent,
    NpcLine,
    PendingLine,
    Readiness,
    RecordSink,
    prompt_stem,
    with_sampler,
)

__all__ = [
    "BUILTIN_EVENTS",
    "DEFAULT_STOPS",
    "AgentConfig",
    "Conversation",
    "NpcAgent",
    "NpcLine",
    "PendingLine",
    "Readiness",
    "RecordSink",
    "prompt_stem",
    "with_sampler",
]
