"""The chat-completions-compatible HTTP endpoint: any OpenAI client can talk to an NPC.

``POST /v1/chat/completions`` answers one player line (``model`` names the persona), whole or as
server-sent ``chat.completion.chunk`` events; ``GET /v1/models`` lists the personas;
``POST /v1/events`` records engagement against a completion id. Every turn is logged like any
other, and its completion id is its turn id. Generation runs in the agent's worker threads: the
event loop only waits for the pending line, woken as it changes.

A streamed answer sends its text once the line is final. The model's raw tokens are not streamed
because the displayed line is known only after post-processing and the output filter have seen
all of it: a raw stream would show text the filter may reject, and would leave the client's copy
of the chat different from what the NPC said (which the next request must send back exactly).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from npcrl.agent.pending import NpcLine, PendingLine
from npcrl.serve.openai_errors import ApiError, bad_field
from npcrl.serve.openai_request import ChatRequest, parse_chat_request, parse_json_object
from npcrl.serve.openai_sessions import ChatSessions
from npcrl.serve.openai_shapes import (
    COMPLETION_PREFIX,
    Completion,
    chunk_body,
    completion_body,
    finish_reason,
    model_list,
    sse,
    usage_chunk_body,
)
from npcrl.serve.protocol import MAX_DATA_CHARS, OPEN_WAIT_S, ClientMessage, ProtocolError
from npcrl.serve.state import ServerState, UnknownTurnError
from npcrl.serve.turns import turn_id
from npcrl.serve.wakeup import line_text

KEEPALIVE_S = 5.0
"""a stream waiting this long for its line sends an SSE comment, so proxies keep it open"""
MAX_TURN_ID_CHARS = 300


def openai_routes(state: ServerState) -> list[BaseRoute]:
    """The endpoint's routes, sharing ``state`` with the rest of the server."""
    endpoint = ChatEndpoint(state)
    return [
        Route("/v1/chat/completions", endpoint.chat, methods=["POST"]),
        Route("/v1/models", endpoint.models, methods=["GET"]),
        Route("/v1/events", endpoint.events, methods=["POST"]),
    ]


class ChatEndpoint:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.sessions = ChatSessions(state)
        self.started = int(time.time())

    async def models(self, request: Request) -> Response:
        return JSONResponse(model_list(sorted(self.state.personas), self.started))

    async def chat(self, request: Request) -> Response:
        try:
            chat = parse_chat_request(parse_json_object(await request.body()))
            config = chat.sampler.apply(self.state.config)
            await self.wait_ready()
            session = self.sessions.session_for(chat, config)
            pending, turn_index = self.sessions.start_turn(session, chat.player_text)
        except ApiError as error:
            return error.response()
        completion = Completion(
            id=COMPLETION_PREFIX + turn_id(session.conversation.conversation_id, turn_index),
            created=int(time.time()),
            model=chat.model,
            bundle_id=session.conversation.model.bundle_id,
        )
        if chat.stream:
            chunks = self.stream(chat, completion, pending, lambda: self.sessions.settle(session))
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async for _ in wait_line(pending):
            pass
        self.sessions.settle(session)
        return JSONResponse(completion_body(completion, pending.result(0)))

    async def stream(
        self, chat: ChatRequest, completion: Completion, pending: PendingLine, settle: Callable[[], None]
    ) -> AsyncIterator[str]:
        """The role first (the client sees the answer has begun), then the final line, the finish
        reason, the usage if asked for, and ``[DONE]``."""
        yield sse(chunk_body(completion, {"role": "assistant", "content": ""}))
        async for comment in wait_line(pending):
            yield comment
        settle()
        line: NpcLine = pending.result(0)
        yield sse(chunk_body(completion, {"content": line.text}))
        yield sse(chunk_body(completion, {}, finish_reason(line)))
        if chat.include_usage:
            yield sse(usage_chunk_body(completion, line))
        yield sse("[DONE]")

    async def wait_ready(self) -> None:
        """Wait (without blocking the loop) for a model still loading; 503 if it never comes."""
        if await self.state.wait_ready(OPEN_WAIT_S):
            return
        if self.state.load_error is not None:
            raise ApiError(503, "the model could not be loaded", code="model_unavailable", kind="server_error")
        raise ApiError(503, "the model is still loading; try again shortly", code="loading", kind="server_error")

    async def events(self, request: Request) -> Response:
        try:
            data = parse_json_object(await request.body())
            turn = data.get("turn")
            if not isinstance(turn, str) or not 0 < len(turn) <= MAX_TURN_ID_CHARS:
                raise bad_field("turn", 'must be a completion id ("chatcmpl-...")', "missing_field")
            kind, value, extra = event_fields(data)
            try:
                self.state.record_event(turn, kind, value, **extra)
            except UnknownTurnError:
                raise ApiError(404, f"no completion {turn!r}", param="turn", code="unknown_turn") from None
            except (ValueError, RuntimeError) as exc:
                raise bad_field("turn", str(exc)) from None
        except ApiError as error:
            return error.response()
        return JSONResponse({"recorded": True, "turn": turn, "kind": kind})


def event_fields(data: dict[str, Any]) -> tuple[str, float | None, dict[str, str]]:
    """(kind, value, extra data) of an event body, checked as the WebSocket ``event`` message is."""
    message = ClientMessage("event", None, data)
    param = "kind"
    try:
        kind = message.kind()
        param = "value"
        value = message.number("value")
        extra = {}
        for name in ("quest", "item"):
            param = name
            text = message.string(name, MAX_DATA_CHARS, required=False)
            if text is not None:
                extra[name] = text
    except ProtocolError as exc:
        raise bad_field(param, exc.message) from None
    return kind, value, extra


async def wait_line(pending: PendingLine) -> AsyncIterator[str]:
    """Wait for ``pending`` without blocking the event loop (woken as it changes), yielding an
    SSE comment every ``KEEPALIVE_S`` while it runs."""
    last = time.monotonic()
    async for _ in line_text(pending, KEEPALIVE_S):
        if time.monotonic() - last >= KEEPALIVE_S:
            last = time.monotonic()
            yield ": generating\n\n"
