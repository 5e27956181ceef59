"""Which records are the same record: ids for engagement events, and the identity of every kind.

A record read twice (a log file copied into the directory again, two files concatenated, the same
event appended twice) must count once. Identity per kind:

- ``ConversationStart`` and ``ConversationEnd``: the conversation id (one of each per conversation);
- ``NpcTurn``: the conversation id and the turn index;
- ``EngagementEvent``: the conversation id and the ``event_id`` the writer gave it; an event from a
  log written before events had ids is identified by its whole payload (every field, its time
  included), since nothing else tells two such events apart.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable

from npcrl.playlog.records import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, Record


class EventIds:
    """Gives engagement events without an id a new one: a random prefix drawn once per source and
    a counter, unique across writers without a clock or a lock (``next`` on ``itertools.count`` is
    atomic under the GIL)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex() + "-"
        self._count = itertools.count(1)

    def assign(self, record: Record) -> None:
        """Set ``event_id`` on the record itself, so that appending the same object again logs the
        same id (and a reader counts it once)."""
        if type(record) is EngagementEvent and not record.event_id:
            record.event_id = f"{self._prefix}{next(self._count):x}"


def record_identity(record: Record, payload_digest: bytes) -> Hashable:
    """The key under which two reads of one record collide; ``payload_digest`` identifies the
    payload's bytes, for events without an id."""
    if isinstance(record, NpcTurn):
        return ("npc_turn", record.conversation_id, record.turn_index)
    if isinstance(record, EngagementEvent):
        if record.event_id:
            return ("engagement_event", record.conversation_id, record.event_id)
        return ("engagement_event", record.conversation_id, payload_digest)
    if isinstance(record, ConversationStart):
        return ("conversation_start", record.conversation_id)
    assert isinstance(record, ConversationEnd)
    return ("conversation_end", record.conversation_id)


def describe_identity(identity: Hashable) -> str:
    """A short human-readable form of an identity, for reports."""
    assert isinstance(identity, tuple)
    kind, conversation_id, *rest = identity
    if kind == "npc_turn":
        return f"npc_turn {conversation_id}#{rest[0]}"
    if kind == "engagement_event":
        key = rest[0]
        return f"engagement_event {conversation_id} " + (
            f"id {key}" if isinstance(key, str) else f"(no id, payload {key.hex()[:12]})"
        )
    return f"{kind} {conversation_id}"
