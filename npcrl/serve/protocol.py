"""Protocol v1 of the WebSocket endpoint: its limits, and the checks that turn a client's frame
into a message or into the error that answers it (docs/PROTOCOL.md)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PROTOCOL = 1


def server_name() -> str:
    """``"npcrl <version>"`` as the ``welcome`` message gives it."""
    try:
        return f"npcrl {version('npcrl')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "npcrl"


MAX_FRAME_BYTES = 64 * 1024
MAX_TEXT_CHARS = 2000
MAX_ID_CHARS = 64
MAX_CONVERSATIONS = 16
MAX_PLAYER_CHARS = 128
MAX_DATA_CHARS = 200
"""a quest name or a traded item"""
RATE_PER_S = 20.0
OPEN_WAIT_S = 120.0
"""how long ``open`` waits for a model still loading before answering ``loading``"""

CONVERSATION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
EVENT_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
MESSAGE_TYPES = ("hello", "open", "say", "event", "cancel", "end")


class ProtocolError(Exception):
    """A client message the server answers with ``{"type":"error"}``; the connection stays up."""

    def __init__(self, code: str, message: str, message_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id

    def reply(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.message_id is not None:
            body["id"] = self.message_id
        return body


@dataclass(frozen=True)
class ClientMessage:
    """One checked client message: its type, the id to echo, and its fields as sent."""

    type: str
    id: str | int | None
    fields: dict[str, Any]

    def error(self, code: str, message: str) -> ProtocolError:
        return ProtocolError(code, message, self.id)

    def string(self, name: str, max_chars: int, *, required: bool = True) -> str | None:
        """Field ``name`` as a non-empty string of at most ``max_chars`` characters."""
        value = self.fields.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise self.error("bad_message", f"field {name!r} must be a non-empty string")
        if len(value) > max_chars:
            code = "too_large" if name == "text" else "bad_message"
            raise self.error(code, f"field {name!r} is {len(value)} characters long; at most {max_chars} allowed")
        return value

    def number(self, name: str) -> float | None:
        """Field ``name`` as a finite number, or None when absent."""
        value = self.fields.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error("bad_message", f"field {name!r} must be a finite number")
        return float(value)

    def conversation(self) -> str:
        value = self.fields.get("conversation")
        if not isinstance(value, str) or not CONVERSATION_ID.fullmatch(value):
            raise self.error("bad_message", "field 'conversation' must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        return value

    def kind(self) -> str:
        value = self.fields.get("kind")
        if not isinstance(value, str) or not EVENT_KIND.fullmatch(value):
            raise self.error("bad_message", "field 'kind' must match [a-z][a-z0-9_]{0,31}")
        return value


def parse_frame(frame: str | bytes | None) -> ClientMessage:
    """A frame as a ``ClientMessage``; raises ``ProtocolError`` for anything else."""
    if not isinstance(frame, str):
        raise ProtocolError("bad_message", "frames must be text frames holding one JSON object")
    if len(frame) > MAX_FRAME_BYTES or len(frame.encode("utf-8")) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame is over {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object with a 'type'")
    message_id = _message_id(data.get("id"))
    kind = data.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError("bad_message", f"field 'type' must be one of {', '.join(MESSAGE_TYPES)}", message_id)
    return ClientMessage(kind, message_id, data)


def _message_id(value: Any) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > MAX_ID_CHARS:
        raise ProtocolError(
            "bad_message", f"field 'id' must be a string or integer of at most {MAX_ID_CHARS} characters"
        )
    return value
