"""What every connection of one server shares: the model (loaded and warmed up in the background),
an ``NpcAgent`` per persona and model, the one ``PlayLogWriter``, the open conversations, and the
turns that events are recorded against."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from npcrl.agent.config import AgentConfig
from npcrl.agent.conversation import Conversation
from npcrl.agent.npc_agent import NpcAgent
from npcrl.agent.pending import PendingLine
from npcrl.agent.persona import Persona
from npcrl.errors import NpcrlError
from npcrl.playlog.writer import PlayLogWriter
from npcrl.runtime.model import OnnxCausalLM
from npcrl.serve.loading import ModelLoader, ModelSource
from npcrl.serve.turns import TurnMap, turn_id
from npcrl.serve.wakeup import ThreadSignal

log = logging.getLogger("npcrl.serve.state")

MAX_AGENTS = 256
"""agents kept at once (inline personas each get one); the least recently used is dropped first"""


class UnknownNpcError(NpcrlError):
    """No loaded persona has this name (clients name NPCs, never files)."""


class UnknownTurnError(NpcrlError):
    """No turn with this id (never answered, or forgotten long ago)."""


class NotReadyError(NpcrlError):
    """The model is still loading."""


class ServerState:
    """The server's shared state. ``start()`` begins loading the model in the background; ``ready``
    turns true once it is loaded and every persona is warmed up on it.

    Thread-safe: the event loop opens conversations and records events while the loader thread
    swaps models."""

    def __init__(
        self,
        writer: PlayLogWriter,
        personas: dict[str, Persona],
        source: ModelSource | None = None,
        config: AgentConfig | None = None,
    ) -> None:
        if not personas:
            raise ValueError("a server needs at least one persona")
        self.writer = writer
        self.personas = dict(personas)
        self.default_npc = "blacksmith" if "blacksmith" in personas else sorted(personas)[0]
        self.config = config or AgentConfig()
        self.turns = TurnMap()
        self.load_error: BaseException | None = None
        self.on_load_failed: Callable[[BaseException], None] | None = None
        """called (in the loader thread) if the first model cannot be loaded; the server stops"""
        self._model: OnnxCausalLM | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._agents: OrderedDict[tuple[str, str, str], NpcAgent] = OrderedDict()
        self._ready_waiters: set[ThreadSignal] = set()
        self._open: dict[Conversation, PendingLine | None] = {}
        """open conversations, each with its latest line (cancelled if the conversation ends early)"""
        self._loader = ModelLoader(source or ModelSource(), self._use_model, self._load_failed)

    # ------------------------------------------------------------------ the model

    def start(self) -> None:
        """Begin loading the model in a background thread; returns at once."""
        self._loader.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def bundle_id(self) -> str | None:
        """The bundle new conversations get (None while loading)."""
        model = self._model
        return None if model is None else model.bundle_id

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait, without blocking the event loop, until the model is ready; False if ``timeout_s``
        ran out or loading failed."""
        if self._ready.is_set():
            return True
        signal = ThreadSignal()  # woken by the loader thread when it is done, either way
        with self._lock:
            self._ready_waiters.add(signal)
        try:
            deadline = time.monotonic() + timeout_s
            while not self._ready.is_set() and self.load_error is None:
                left = deadline - time.monotonic()
                if left <= 0 or not await signal.wait(left):
                    break
        finally:
            with self._lock:
                self._ready_waiters.discard(signal)
        return self._ready.is_set()

    def _wake_ready_waiters(self) -> None:
        with self._lock:
            waiters = list(self._ready_waiters)
        for signal in waiters:
            signal.set()

    def _use_model(self, model: OnnxCausalLM) -> None:
        """A newly loaded model: warm every persona up on it, then hand it to new conversations."""
        for persona in self.personas.values():
            try:
                self._agent(persona, model).warm_up().result()
            except Exception as exc:  # the first turn then does the work itself
                log.warning("warm-up of %s failed: %s: %s", persona.id, type(exc).__name__, exc)
        with self._lock:
            self._model = model
            # agents of the old model go; open conversations keep their own reference to it
            for key in [key for key in self._agents if key[2] != model.bundle_id]:
                del self._agents[key]
        self._ready.set()
        self._wake_ready_waiters()

    def _load_failed(self, error: BaseException) -> None:
        self.load_error = error
        self._wake_ready_waiters()
        if self.on_load_failed is not None:
            self.on_load_failed(error)

    # ------------------------------------------------------------------ agents and conversations

    def persona(self, npc: str | None) -> Persona:
        """The loaded persona named ``npc`` (None: the default one)."""
        name = self.default_npc if npc is None else npc
        found = self.personas.get(name)
        if found is None:
            raise UnknownNpcError(f"no NPC named {name!r}; known: {', '.join(sorted(self.personas))}")
        return found

    def agent_for(self, npc: str | None = None, persona: Persona | None = None) -> NpcAgent:
        """The agent of ``persona`` (inline) or of the loaded persona ``npc`` on the current model;
        agents are cached per persona and model and all write to ``writer``."""
        model = self._model
        if model is None:
            raise NotReadyError("the model is still loading")
        return self._agent(persona if persona is not None else self.persona(npc), model)

    def _agent(self, persona: Persona, model: OnnxCausalLM) -> NpcAgent:
        key = (persona.id, persona.persona_hash, model.bundle_id)
        with self._lock:
            agent = self._agents.get(key)
            if agent is None or agent.model is not model:
                agent = self._agents[key] = self.new_agent(persona, model)
            self._agents.move_to_end(key)
            while len(self._agents) > MAX_AGENTS:
                self._agents.popitem(last=False)
            return agent

    def new_agent(self, persona: Persona, model: OnnxCausalLM) -> NpcAgent:
        """A new agent of ``persona`` on ``model``, logging to ``writer`` (a subclass may set more of
        ``NpcAgent``'s options, such as its output filter or system prompt)."""
        return NpcAgent(model, persona, log_writer=self.writer, config=self.config)

    def open_conversation(self, agent: NpcAgent, player_id: str, conversation_id: str | None = None) -> Conversation:
        """Start a conversation the server keeps track of (``/health`` counts it; shutdown ends it)."""
        conversation = agent.conversation(player_id, conversation_id)
        with self._lock:
            self._open[conversation] = None
        return conversation

    def respond(self, conversation: Conversation, text: str) -> PendingLine:
        """Start the NPC's answer to ``text`` in a worker thread (never on the event loop)."""
        pending = conversation.respond_async(text)
        with self._lock:
            if conversation in self._open:
                self._open[conversation] = pending
        return pending

    def end_conversation(self, conversation: Conversation, reason: str = "ended") -> None:
        """End ``conversation`` (idempotent): a line still generating is cancelled; its KV slot is
        freed and its record written as soon as its turn stops."""
        with self._lock:
            pending = self._open.pop(conversation, None)
        if pending is not None and not pending.done:
            pending.cancel()
        conversation.end(reason)

    @property
    def conversations(self) -> int:
        """Conversations open now."""
        with self._lock:
            for ended in [c for c in self._open if c.ended]:
                del self._open[ended]
            return len(self._open)

    # ------------------------------------------------------------------ turns and events

    def register_turn(self, key: str, conversation: Conversation, turn_index: int) -> None:
        """Remember turn ``key`` of ``conversation`` so that events can name it."""
        self.turns.register(key, conversation, turn_index)

    def register_line(self, conversation: Conversation, turn_index: int) -> str:
        """Register a turn under its standard id (``"<conversation id>:<turn index>"``); returns the id."""
        key = turn_id(conversation.conversation_id, turn_index)
        self.register_turn(key, conversation, turn_index)
        return key

    def record_event(self, key: str, kind: str, value: float | None = None, **data: Any) -> None:
        """Record an engagement event against turn ``key`` (a chat-completion id works too).
        ``walked_away`` is the player leaving: the conversation records it and ends."""
        ref = self.turns.get(key) or self.turns.get(key.removeprefix("chatcmpl-"))
        if ref is None:
            raise UnknownTurnError(f"no turn {key!r}")
        if kind == "walked_away":
            ref.conversation.walk_away()
            self.end_conversation(ref.conversation)
            return
        if kind == "quest_accepted" and value is None:
            value = 1.0
        ref.conversation.record(kind, value, turn_index=ref.turn_index, **data)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """End every open conversation, then close the writer (it waits for turns still logging)."""
        self._loader.stop(timeout_s=0.0)
        with self._lock:
            remaining = list(self._open)
        for conversation in remaining:
            self.end_conversation(conversation, "server_shutdown")
        self.writer.close()
