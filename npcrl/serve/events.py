"""The ``event`` message: which turn it names, and the value and data it records."""

from __future__ import annotations

from typing import Any

from npcrl.agent.conversation import Conversation
from npcrl.serve.protocol import MAX_DATA_CHARS, ClientMessage
from npcrl.serve.state import ServerState
from npcrl.serve.turns import turn_id

NEEDS_VALUE = ("rating", "trade")
DATA_FIELDS = {"quest_accepted": "quest", "trade": "item"}
"""the one data field each built-in kind carries into the play log"""


def event_args(
    message: ClientMessage, conversation: Conversation, state: ServerState
) -> tuple[str, float | None, dict[str, Any]]:
    """(turn id, value, data) of an ``event`` message about ``conversation``; raises the
    ``ProtocolError`` that answers a bad one."""
    kind = message.kind()
    value = message.number("value")
    if kind in NEEDS_VALUE and value is None:
        raise message.error("bad_message", f"field 'value' is required for a {kind!r} event")
    data: dict[str, Any] = {}
    field = DATA_FIELDS.get(kind)
    if field is not None:
        text = message.string(field, MAX_DATA_CHARS, required=False)
        if text is not None:
            data[field] = text
    return event_turn(message, conversation, state), value, data


def event_turn(message: ClientMessage, conversation: Conversation, state: ServerState) -> str:
    """The turn an event names: its ``turn`` field, or the conversation's last line."""
    given = message.fields.get("turn")
    if given is None:
        if not conversation.lines:
            raise message.error(
                "bad_message", "field 'turn': no NPC line yet in this conversation to attach the event to"
            )
        last = conversation.lines[-1].turn_index
        state.register_line(conversation, last)
        return turn_id(conversation.conversation_id, last)
    if not isinstance(given, str):
        raise message.error("bad_message", "field 'turn' must be a turn id string from a 'line' message")
    ref = state.turns.get(given)
    if ref is None or ref.conversation is not conversation:
        raise message.error("bad_message", f"field 'turn': {given!r} is not a finished line of this conversation")
    return given
