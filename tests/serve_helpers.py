"""Helpers of the ``npcrl serve`` tests: the app on a tiny bundle, run by uvicorn in a thread on a
free loopback port, and a small synchronous WebSocket client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from npcrl.agent.config import AgentConfig, with_sampler
from npcrl.agent.npc_agent import NpcAgent
from npcrl.agent.persona import Persona
from npcrl.playlog.reader import read_log_dir
from npcrl.playlog.records import Record
from npcrl.runtime.model import OnnxCausalLM
from npcrl.serve.server import bind, uvicorn_server
from npcrl.serve.state import ServerState

HANG_GUARD_S = 120.0
"""every wait in these tests: far above the work (a tiny model answers in well under a second)"""


class ShortPromptState(ServerState):
    """The tiny model holds 256 positions, fewer than any persona card's system prompt: its agents
    get a one-line system prompt instead."""

    def new_agent(self, persona: Persona, model: OnnxCausalLM) -> NpcAgent:
        system = f"You are {persona.name}, {persona.role}. Be brief."
        return NpcAgent(model, persona, log_writer=self.writer, config=self.config, system_prompt=system)


def tiny_config() -> AgentConfig:
    """Short lines and no wall-clock budget, so that a loaded machine never turns a line into a fallback."""
    return with_sampler(AgentConfig(time_budget_s=None), max_new_tokens=8, seed=0)


@contextmanager
def running(state: ServerState, token: str | None = None) -> Iterator[int]:
    """Serve ``state`` in a thread; yields the port. Leaving stops the server and closes the state."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(state, token)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(HANG_GUARD_S)
        sock.close()


class Client:
    """A test client: JSON in and out, every receive under the hang guard."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def send(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def send_raw(self, frame: str | bytes) -> None:
        self.ws.send(frame)

    def receive(self) -> dict[str, Any]:
        reply = json.loads(self.ws.recv(timeout=HANG_GUARD_S))
        assert isinstance(reply, dict)
        return reply

    def until(self, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The next message of type ``kind``, and the messages before it."""
        before = []
        while True:
            reply = self.receive()
            if reply["type"] == kind:
                return reply, before
            assert reply["type"] != "error", f"waiting for {kind!r}, got {reply}"
            before.append(reply)

    def open(self, conversation: str, npc: str = "blacksmith") -> dict[str, Any]:
        self.send(type="open", conversation=conversation, npc=npc, player="p1")
        return self.until("opened")[0]

    def say(self, conversation: str, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.send(type="say", conversation=conversation, text=text)
        return self.until("line")


@contextmanager
def client(port: int, query: str = "", headers: dict[str, str] | None = None) -> Iterator[Client]:
    with connect(f"ws://127.0.0.1:{port}/v1/ws{query}", additional_headers=headers, open_timeout=HANG_GUARD_S) as ws:
        yield Client(ws)


def log_records(directory: Path) -> list[Record]:
    return list(read_log_dir(directory))
