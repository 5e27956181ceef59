"""The JSON bodies of the chat-completions endpoint, in the shapes the official ``openai`` client
parses: ``chat.completion``, ``chat.completion.chunk`` and the model list."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from npcrl.agent.pending import NpcLine

COMPLETION_PREFIX = "chatcmpl-"


@dataclass(frozen=True)
class Completion:
    """What every body of one answer shares."""

    id: str
    """``"chatcmpl-<conversation>:<turn index>"``: the turn id, as ``/v1/events`` takes it"""
    created: int
    model: str
    bundle_id: str


def finish_reason(line: NpcLine) -> str:
    """``content_filter`` when the output filter replaced the line, ``length`` when the token limit
    cut it, else ``stop`` (a fallback line is a complete line too)."""
    if line.filtered:
        return "content_filter"
    if not line.fallback and line.stop_reason == "max_new_tokens":
        return "length"
    return "stop"


def usage(line: NpcLine) -> dict[str, int]:
    result = line.generation
    prompt = len(result.prompt_ids) if result is not None else 0
    completion = len(result.token_ids) if result is not None else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def line_details(line: NpcLine) -> dict[str, Any]:
    """npcrl's own view of the line (clients that do not know the field ignore it)."""
    return {
        "fallback": line.fallback,
        "filtered": line.filtered,
        "queue_s": round(line.queue_s, 4),
        "ttft_s": round(line.time_to_first_token_s, 4),
    }


def completion_body(completion: Completion, line: NpcLine) -> dict[str, Any]:
    """A whole non-streamed answer."""
    return {
        **header(completion, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": line.text},
                "finish_reason": finish_reason(line),
                "logprobs": None,
            }
        ],
        "usage": usage(line),
        "npcrl": line_details(line),
    }


def chunk_body(completion: Completion, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    """One streamed piece of an answer."""
    choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
    return {**header(completion, "chat.completion.chunk"), "choices": [choice]}


def usage_chunk_body(completion: Completion, line: NpcLine) -> dict[str, Any]:
    """The last chunk when the client asked for ``stream_options.include_usage``: no choices."""
    return {**header(completion, "chat.completion.chunk"), "choices": [], "usage": usage(line)}


def header(completion: Completion, kind: str) -> dict[str, Any]:
    return {
        "id": completion.id,
        "object": kind,
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": completion.bundle_id,
    }


def sse(body: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` (or a bare string such as ``[DONE]``)."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def model_list(names: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "npcrl"} for name in names],
    }
