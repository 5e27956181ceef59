"""A chat-completions request, checked and mapped onto npcrl's terms: the persona (``model``), the
system text, the exchanges so far, the player's new line and the sampler settings.

Every refusal is an ``ApiError`` naming the request field, so a client sees which value was wrong."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from npcrl.agent.config import AgentConfig
from npcrl.serve.openai_errors import ApiError, bad_field
from npcrl.serve.protocol import MAX_TEXT_CHARS

MAX_BODY_BYTES = 1 << 20
"""a request body larger than this is refused before it is parsed"""
MAX_MESSAGES = 256
MAX_TEMPERATURE = 2.0
"""the chat-completions range of ``temperature``"""
USER_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
SYSTEM_ROLES = ("system", "developer")  # newer clients send the system turn as "developer"

Exchange = tuple[str, str]
"""(player's line, NPC's line) as the client saw them"""


@dataclass(frozen=True)
class SamplerChanges:
    """The sampler fields a request sets (None: the server's setting)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    def apply(self, config: AgentConfig) -> AgentConfig:
        """``config`` with these changes; a value the sampler or the prompt budget refuses is a 400."""
        sampler = config.sampler
        for param, name, value in (
            ("max_tokens", "max_new_tokens", self.max_tokens),
            ("temperature", "temperature", self.temperature),
            ("top_p", "top_p", self.top_p),
        ):
            if value is None:
                continue
            change: dict[str, Any] = {name: value}
            try:
                sampler = replace(sampler, **change)
            except ValueError as exc:
                raise bad_field(param, str(exc)) from None
        try:
            return replace(config, sampler=sampler)
        except ValueError as exc:  # max_tokens must leave room for a prompt
            raise bad_field("max_tokens", str(exc)) from None


@dataclass(frozen=True)
class ChatRequest:
    model: str
    player_text: str
    history: list[Exchange] = field(default_factory=list)
    system: str | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    sampler: SamplerChanges = field(default_factory=SamplerChanges)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="bad_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="bad_json")
    return data


def parse_chat_request(data: dict[str, Any]) -> ChatRequest:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_field("model", "must be a non-empty string (a persona name)", "missing_field")
    system, history, player_text = split_messages(data.get("messages"))
    stream = optional_bool(data, "stream") or False
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_field("stream_options", "must be an object")
    n = data.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad_field("n", "only one choice per request is supported (n=1)")
    user = data.get("user")
    if user is not None and (not isinstance(user, str) or not USER_PATTERN.fullmatch(user)):
        raise bad_field("user", "must be 1-128 printable characters")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
    sampler = SamplerChanges(
        max_tokens=optional_int(param, max_tokens),
        temperature=optional_number("temperature", data.get("temperature"), MAX_TEMPERATURE),
        top_p=optional_number("top_p", data.get("top_p"), 1.0),
    )
    return ChatRequest(
        model=model,
        player_text=player_text,
        history=history,
        system=system,
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        user=user,
        sampler=sampler,
    )


def split_messages(messages: object) -> tuple[str | None, list[Exchange], str]:
    """(system text, earlier exchanges, the player's new line) of a ``messages`` list: system turns
    anywhere, then user/assistant pairs, ending with one user message."""
    if not isinstance(messages, list) or not messages:
        raise bad_field("messages", "must be a non-empty array of messages", "missing_field")
    if len(messages) > MAX_MESSAGES:
        raise bad_field("messages", f"at most {MAX_MESSAGES} messages are allowed", "too_large")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role, content = message_parts(index, message)
        if role in SYSTEM_ROLES:
            system.append(content)
        else:
            turns.append((role, content))
    if not turns or turns[-1][0] != "user":
        raise bad_field("messages", "the last message must be the player's (role 'user')")
    expected = ("user", "assistant") * (len(turns) // 2)
    if tuple(role for role, _ in turns[:-1]) != expected:
        raise bad_field("messages", "earlier messages must alternate user, assistant, starting with user")
    player_text = turns[-1][1]
    if not player_text.strip():
        raise bad_field("messages", "the player's message is empty")
    if len(player_text) > MAX_TEXT_CHARS:
        raise bad_field("messages", f"the player's message is longer than {MAX_TEXT_CHARS} characters", "too_large")
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return ("\n\n".join(system) if system else None), history, player_text


def message_parts(index: int, message: object) -> tuple[str, str]:
    """(role, text) of one message; content may be a string or a list of text parts."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_field(where, "must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in (*SYSTEM_ROLES, "user", "assistant"):
        raise bad_field(f"{where}.role", f"must be one of system, developer, user, assistant; got {role!r}")
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_field(f"{where}.content", "only text content parts are supported")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad_field(f"{where}.content", "must be a string or a list of text parts")
    return str(role), content


def optional_bool(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_field(name, f"must be true or false, got {value!r}")
    return value


def optional_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_field(name, f"must be a positive integer, got {value!r}")
    return value


def optional_number(name: str, value: object, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_field(name, f"must be a number, got {value!r}")
    if not 0.0 <= value <= high:
        raise bad_field(name, f"must be between 0 and {high:g}, got {value!r}")
    return float(value)
