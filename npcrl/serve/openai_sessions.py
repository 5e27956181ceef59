"""The conversations behind the chat-completions endpoint.

A chat-completions client resends the whole chat each time, but an npcrl ``Conversation`` cannot
start from turns it did not speak: its memory (the exchanges in the prompt, the KV cache kept
between turns, the turn indices events name) is built only by its own turns. So the server keeps
one conversation per (user, model, system text) alive between requests, and each request's
earlier messages must be exactly what was said in it: an empty history starts a new conversation,
a matching one continues it, anything else is refused (a 400), never silently trained on as if
the NPC had said it.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from npcrl.agent.config import AgentConfig
from npcrl.agent.conversation import Conversation
from npcrl.agent.npc_agent import NpcAgent
from npcrl.agent.pending import PendingLine
from npcrl.serve.openai_errors import ApiError
from npcrl.serve.openai_request import ChatRequest, Exchange
from npcrl.serve.state import ServerState

MAX_SESSIONS = 256
"""conversations kept for chat clients at once; the least recently used idle one ends first"""

SessionKey = tuple[str, str, str]
"""(player id, model, sha256 of the system text)"""


def session_key(request: ChatRequest) -> SessionKey:
    system = hashlib.sha256((request.system or "").encode("utf-8")).hexdigest()
    return (player_id(request), request.model, system)


def player_id(request: ChatRequest) -> str:
    return request.user or "http"


def same_text(a: str, b: str) -> bool:
    """Equal up to whitespace: clients trim or re-wrap what they display."""
    return a.split() == b.split()


@dataclass
class ChatSession:
    """One kept conversation: its own agent (so a request's sampler settings apply to its turns
    only), and every exchange as the client saw it, fallback lines included."""

    agent: NpcAgent
    conversation: Conversation
    transcript: list[Exchange] = field(default_factory=list)
    pending: PendingLine | None = None
    asked: str = ""
    """the player's line ``pending`` answers (until it is settled into the transcript)"""

    @property
    def busy(self) -> bool:
        return self.pending is not None and not self.pending.done

    def matches(self, history: list[Exchange]) -> bool:
        return len(history) == len(self.transcript) and all(
            same_text(said[0], sent[0]) and same_text(said[1], sent[1])
            for said, sent in zip(self.transcript, history, strict=True)
        )


class ChatSessions:
    """The kept conversations, by ``SessionKey``; thread-safe."""

    def __init__(self, state: ServerState, capacity: int = MAX_SESSIONS) -> None:
        self.state = state
        self.capacity = capacity
        self._sessions: OrderedDict[SessionKey, ChatSession] = OrderedDict()
        self._lock = threading.Lock()

    def session_for(self, request: ChatRequest, config: AgentConfig) -> ChatSession:
        """The conversation ``request`` continues, or a new one when it sends no earlier messages;
        its next turn speaks with ``config``."""
        key = session_key(request)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self.settle(session)
            if session is not None and session.busy:
                raise ApiError(409, "the NPC is still answering the previous message of this chat", code="busy")
            if request.history:
                self._check_history(session, request.history)
                assert session is not None
                self._sessions.move_to_end(key)
                session.agent.config = config
                return session
            self._sessions.pop(key, None)
        if session is not None:  # the client started the chat over
            self.state.end_conversation(session.conversation, "restarted")
        session = self._open(request, config)
        with self._lock:
            self._sessions[key] = session
            evicted = self._evict()
        for old in evicted:
            self.state.end_conversation(old.conversation, "evicted")
        return session

    def start_turn(self, session: ChatSession, player_text: str) -> tuple[PendingLine, int]:
        """Start the NPC's answer in a worker thread; (its pending line, its turn index)."""
        turn_index = len(session.conversation.lines)  # the previous turn has finished: its line is kept
        session.pending = self.state.respond(session.conversation, player_text)
        session.asked = player_text
        return session.pending, turn_index

    def settle(self, session: ChatSession) -> None:
        """Once its line is done, a turn joins the transcript and events may name it. Idempotent; a
        turn whose client went away before the answer is settled by the chat's next request."""
        pending = session.pending
        if pending is None or not pending.done:
            return
        line = pending.result(0)
        session.pending = None
        session.transcript.append((session.asked, line.text))
        self.state.register_line(session.conversation, line.turn_index)

    def _check_history(self, session: ChatSession | None, history: list[Exchange]) -> None:
        if session is None or not session.matches(history):
            raise ApiError(
                400,
                "messages: the earlier user/assistant messages are not this chat's conversation so far "
                "(send only the new user message, with any system message, to start a new one)",
                param="messages",
                code="history_mismatch",
            )
        if session.conversation.ended:
            raise ApiError(
                400,
                "messages: this chat's conversation has ended (the player walked away); start a new one",
                param="messages",
                code="conversation_ended",
            )

    def _open(self, request: ChatRequest, config: AgentConfig) -> ChatSession:
        """A new conversation with an agent of its own, of the persona ``model`` names (any other
        name: the default persona), the system text as its system prompt when one is given."""
        npc = request.model if request.model in self.state.personas else None
        base = self.state.agent_for(npc)
        agent = NpcAgent(
            base.model,
            base.persona,
            log_writer=self.state.writer,
            config=config,
            npc_id=base.npc_id,
            output_filter=base.output_filter,
            system_prompt=request.system if request.system is not None else base.system_prompt,
        )
        conversation = self.state.open_conversation(agent, player_id(request), f"http-{uuid.uuid4().hex}")
        return ChatSession(agent, conversation)

    def _evict(self) -> list[ChatSession]:
        """Sessions beyond the capacity, least recently used first (a busy one is kept)."""
        evicted = []
        for key in list(self._sessions):
            if len(self._sessions) <= self.capacity:
                break
            if not self._sessions[key].busy:
                evicted.append(self._sessions.pop(key))
        return evicted
