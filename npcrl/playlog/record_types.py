"""The play-log record kinds: one dataclass per kind, and the kind numbers written in each frame.

Their msgpack payloads (field name to value) are made and checked in ``npcrl.playlog.records``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RejectedSamples = list[dict[str, Any]]
"""``NpcTurn.rejected_samples``: each sample of the turn that the agent drew and did not show because
it contradicted the persona card, in the order drawn, as a map with ``response_ids``, ``logprobs``,
``full_logprobs`` (one entry per token each, as the turn's own lists), ``sampler`` (the sampler
settings it was drawn with, its seed included) and ``reason`` (``contradicts_card:...``). A turn
that fell back because every sample contradicted lists all of them, its own ids included. Checked
field by field in ``npcrl.playlog.field_checks``; no text is kept (the ids say what was sampled)."""
REJECTED_SAMPLE_KEYS = ("response_ids", "logprobs", "full_logprobs", "sampler", "reason")

KIND_CONVERSATION_START = 1
KIND_NPC_TURN = 2
KIND_ENGAGEMENT_EVENT = 3
KIND_CONVERSATION_END = 4
KIND_NAMES = {
    KIND_CONVERSATION_START: "conversation_start",
    KIND_NPC_TURN: "npc_turn",
    KIND_ENGAGEMENT_EVENT: "engagement_event",
    KIND_CONVERSATION_END: "conversation_end",
}


@dataclass
class ConversationStart:
    conversation_id: str
    npc_id: str
    player_id: str
    persona_name: str
    persona_hash: str
    bundle_id: str
    sampler: dict[str, Any]
    time: float  # unix seconds


@dataclass
class NpcTurn:
    conversation_id: str
    turn_index: int
    npc_id: str
    bundle_id: str
    player_text: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    full_logprobs: list[float]
    text: str
    stop_reason: str
    sampler: dict[str, Any]
    latency_s: float
    time_to_first_token_s: float
    filtered: bool
    fallback: bool
    time: float
    filter_reason: str | None = None
    queue_s: float = 0.0
    rejected_samples: RejectedSamples = field(default_factory=list)


@dataclass
class EngagementEvent:
    conversation_id: str
    turn_index: int
    kind: str  # "reply", "rating", "walk_away", "quest_accepted", "trade", or any custom string
    value: float | None
    time: float
    data: dict[str, Any] = field(default_factory=dict)
    # Set by PlayLogWriter.append ("" in logs written before events had ids); bookkeeping for
    # recognising a record read twice, so == compares what happened and leaves it out.
    event_id: str = field(default="", compare=False)


@dataclass
class ConversationEnd:
    conversation_id: str
    reason: str
    time: float


Record = ConversationStart | NpcTurn | EngagementEvent | ConversationEnd
# How many leading fields each kind had when format version 1 first shipped; fields after them are
# optional additions, written only when they differ from their default (see the module docstring).
FIRST_FIELDS: dict[type, int] = {ConversationStart: 8, NpcTurn: 18, EngagementEvent: 6, ConversationEnd: 3}
