"""One WebSocket connection: its conversations, its rate limit, and the answer to each message.

Messages are handled in the order they arrive. A ``say`` starts the NPC's line in a worker thread
(``Conversation.respond_async``); a task of the event loop is woken as its text arrives
(``npcrl.serve.wakeup``) and streams ``delta`` messages, so the connection keeps reading
(``cancel``, ``event``, other conversations) meanwhile.
Closing the connection ends every conversation it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from npcrl.agent.conversation import Conversation
from npcrl.agent.pending import NpcLine, PendingLine
from npcrl.errors import PersonaError
from npcrl.serve.events import event_args
from npcrl.serve.personas import inline_persona
from npcrl.serve.protocol import (
    MAX_CONVERSATIONS,
    MAX_PLAYER_CHARS,
    MAX_TEXT_CHARS,
    OPEN_WAIT_S,
    PROTOCOL,
    RATE_PER_S,
    ClientMessage,
    ProtocolError,
    parse_frame,
    server_name,
)
from npcrl.serve.security import RateLimiter
from npcrl.serve.state import ServerState, UnknownNpcError
from npcrl.serve.turns import turn_id
from npcrl.serve.wakeup import line_text

log = logging.getLogger("npcrl.serve.session")

END_WAIT_S = 30.0
"""hang guard: how long ``end`` waits for a cancelled line's last message before answering"""
MAX_LOG_ID = 128


def log_conversation_id(connection: str, opened: int, conversation: str) -> str:
    """The play log's id of a client's conversation: unique across connections and server runs
    (clients choose their ids per connection), and across reopenings of one id on a connection
    (``opened`` counts the connection's opens: the log would take a reused id for a copy of the
    first conversation's records), within the log's 128 characters."""
    logged = f"{connection}-{opened}-{conversation}"
    if len(logged) <= MAX_LOG_ID:
        return logged
    return f"{connection}-{opened}-{hashlib.sha256(conversation.encode()).hexdigest()}"


@dataclass
class Talk:
    """One conversation of this connection, and its line in progress."""

    conversation: Conversation
    pending: PendingLine | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


class WsSession:
    """The server side of one WebSocket connection."""

    def __init__(self, state: ServerState, ws: WebSocket) -> None:
        self.state = state
        self.ws = ws
        self.talks: dict[str, Talk] = {}
        self.opened = 0  # conversations this connection has opened, for unique log ids
        self.connection = secrets.token_hex(8)
        self.limiter = RateLimiter(RATE_PER_S, RATE_PER_S)
        self._send_lock = asyncio.Lock()
        self._handlers: dict[str, Callable[[ClientMessage], Awaitable[None]]] = {
            "hello": self.hello,
            "open": self.open,
            "say": self.say,
            "event": self.event,
            "cancel": self.cancel,
            "end": self.end,
        }

    async def run(self) -> None:
        """Serve the connection until the client goes away (or the server shuts down)."""
        await self.ws.accept()
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self.handle(message.get("text", message.get("bytes")))
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("connection %s lost: %s", self.connection, exc)
        finally:
            self.close()

    async def handle(self, frame: str | bytes | None) -> None:
        try:
            if not self.limiter.allow():
                raise ProtocolError("rate_limited", f"more than {RATE_PER_S:g} messages a second; message dropped")
            message = parse_frame(frame)
            await self._handlers[message.type](message)
        except ProtocolError as exc:
            await self.send(exc.reply())

    async def send(self, body: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(body, ensure_ascii=False))

    async def reply(self, message: ClientMessage, body: dict[str, Any]) -> None:
        await self.send(body if message.id is None else {**body, "id": message.id})

    def talk(self, message: ClientMessage) -> tuple[str, Talk]:
        name = message.conversation()
        found = self.talks.get(name)
        if found is None:
            raise message.error("unknown_conversation", f"no open conversation {name!r} on this connection")
        return name, found

    # ------------------------------------------------------------------ messages

    async def hello(self, message: ClientMessage) -> None:
        protocol = message.fields.get("protocol", PROTOCOL)
        if protocol != PROTOCOL:
            raise message.error("bad_message", f"field 'protocol': this server speaks protocol {PROTOCOL}")
        welcome = {"type": "welcome", "protocol": PROTOCOL, "server": server_name()}
        await self.reply(message, {**welcome, "bundle_id": self.state.bundle_id, "ready": self.state.ready})

    async def open(self, message: ClientMessage) -> None:
        name = message.conversation()
        if name in self.talks:
            raise message.error("conversation_exists", f"conversation {name!r} is already open on this connection")
        if len(self.talks) >= MAX_CONVERSATIONS:
            raise message.error("too_many_conversations", f"at most {MAX_CONVERSATIONS} conversations per connection")
        try:
            if "persona" in message.fields:
                persona = inline_persona(message.fields["persona"])
            else:
                persona = self.state.persona(message.string("npc", 40, required=False))
        except UnknownNpcError as exc:
            raise message.error("unknown_npc", str(exc)) from None
        except PersonaError as exc:
            raise message.error("bad_message", str(exc)) from None
        player = message.string("player", MAX_PLAYER_CHARS, required=False) or "player"
        if not await self.state.wait_ready(OPEN_WAIT_S):
            raise message.error("loading", "the model is still loading; try again shortly")
        if name in self.talks:  # opened meanwhile by a later message of this connection
            raise message.error("conversation_exists", f"conversation {name!r} is already open on this connection")
        agent = self.state.agent_for(persona=persona)
        self.opened += 1
        log_id = log_conversation_id(self.connection, self.opened, name)
        conversation = self.state.open_conversation(agent, player, log_id)
        self.talks[name] = Talk(conversation)
        opened = {"type": "opened", "conversation": name, "npc": persona.id}
        await self.reply(
            message, {**opened, "bundle_id": conversation.model.bundle_id, "greeting": conversation.greeting}
        )

    async def say(self, message: ClientMessage) -> None:
        name, talk = self.talk(message)
        text = message.string("text", MAX_TEXT_CHARS)
        assert text is not None
        if talk.busy:
            raise message.error("busy", f"the NPC of {name!r} is still answering; wait for its line or cancel it")
        turn_index = len(talk.conversation.lines)
        talk.cancel_requested = False
        talk.pending = self.state.respond(talk.conversation, text)
        turn = turn_id(talk.conversation.conversation_id, turn_index)
        talk.task = asyncio.create_task(self.stream(message, name, talk, turn))

    async def stream(self, message: ClientMessage, name: str, talk: Talk, turn: str) -> None:
        """Send the line's text as it comes, then the line; never raises (the client may be gone)."""
        pending = talk.pending
        assert pending is not None
        head = {"conversation": name, "turn": turn}
        try:
            async for text in line_text(pending):
                await self.reply(message, {"type": "delta", **head, "text": text})
            line = pending.result()
            self.state.register_line(talk.conversation, line.turn_index)
            await self.reply(message, {"type": "line", **head, **line_fields(line, talk.cancel_requested)})
        except Exception as exc:  # the connection closed under us: its conversations end in close()
            log.debug("line of %s not delivered: %s", name, exc)

    async def event(self, message: ClientMessage) -> None:
        name, talk = self.talk(message)
        kind = message.kind()
        turn, value, data = event_args(message, talk.conversation, self.state)
        self.state.record_event(turn, kind, value, **data)
        if talk.conversation.ended:  # walked away: the conversation is over
            self.talks.pop(name, None)
        await self.reply(message, {"type": "recorded", "conversation": name, "kind": kind, "turn": turn})

    async def cancel(self, message: ClientMessage) -> None:
        _, talk = self.talk(message)
        if talk.busy and talk.pending is not None:
            talk.cancel_requested = True
            talk.pending.cancel()

    async def end(self, message: ClientMessage) -> None:
        name, talk = self.talk(message)
        del self.talks[name]
        talk.cancel_requested = talk.busy
        self.state.end_conversation(talk.conversation)
        if talk.task is not None:
            # the cancelled line's own message goes first, so a client sees every line it asked for
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(talk.task), END_WAIT_S)
        await self.reply(message, {"type": "ended", "conversation": name})

    # ------------------------------------------------------------------ the end of the connection

    def close(self) -> None:
        """End every conversation of the connection: lines still generating are cancelled, and each
        turn's record is written as its worker stops."""
        for talk in self.talks.values():
            if talk.task is not None:
                talk.task.cancel()
            self.state.end_conversation(talk.conversation, "disconnected")
        self.talks.clear()


def line_fields(line: NpcLine, cancel_requested: bool) -> dict[str, Any]:
    """What a ``line`` message says about a finished line."""
    return {
        "text": line.text,
        "fallback": line.fallback,
        "filtered": line.filtered,
        "cancelled": cancel_requested and line.stop_reason == "cancelled",
        "queue_s": round(line.queue_s, 4),
        "ttft_s": round(line.time_to_first_token_s, 4),
        "turn_index": line.turn_index,
    }
