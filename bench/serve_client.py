"""An ``npcrl serve`` process for the benchmarks, and a WebSocket client of its protocol (docs/PROTOCOL.md).

``ServerProcess`` starts ``npcrl serve --port 0`` in a subprocess, reads the port from its first
stdout line, waits for ``/health`` to say ready, reads its resident memory from ``/proc`` and stops
it with SIGINT (the server then ends its conversations and closes its play log). ``WsClient``
holds one connection and times each line from the client's side.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

LISTENING = re.compile(r"^npcrl serve: listening on (http://\S+)$")
# hang guards only: far above what starting, loading and warming the model take on a slow machine
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
# A client sends at most one message per SEND_GAP_S: the server limits a connection to 20 messages
# a second, and a tiny test model answers faster than any player types. It never delays a real
# model's lines, which take far longer than this.
SEND_GAP_S = 0.06


class ServerProcess:
    """``npcrl serve`` in a subprocess; a context manager that stops it on exit."""

    def __init__(self, bundle: Path, logs: Path, extra_args: Sequence[str] = ()) -> None:
        self.stderr_path = logs.parent / f"{logs.name}-server.stderr"
        command = [sys.executable, "-m", "npcrl.cli", "serve", "--bundle", str(bundle), "--port", "0"]
        command += ["--logs", str(logs), *extra_args]
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.url = self._read_url()
        # keep reading stdout so that a chatty server never blocks on a full pipe
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # type: ignore[union-attr]

    def _read_url(self) -> str:
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(START_TIMEOUT_S)
        match = LISTENING.match(found[0].strip()) if found else None
        if match is None:
            self.stop()
            raise RuntimeError(f"npcrl serve did not announce its port: {found!r}\n{self.stderr_tail()}")
        return match.group(1)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/ws"

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=30) as response:
            return json.loads(response.read())

    def wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"npcrl serve exited with status {self.process.returncode}\n{self.stderr_tail()}")
            health = self.health()
            if health.get("status") == "ready":
                return health
            time.sleep(0.2)
        raise TimeoutError(f"npcrl serve not ready after {START_TIMEOUT_S:.0f} s\n{self.stderr_tail()}")

    def rss_mb(self) -> float:
        """Resident memory of the server process now (VmRSS), in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
        return kb / 1024

    def stop(self) -> int:
        """SIGINT (a clean shutdown: conversations ended, play log closed); kill only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def stderr_tail(self, chars: int = 4000) -> str:
        return self.stderr_path.read_text(errors="replace")[-chars:] if self.stderr_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LineTiming:
    """One NPC line as a client saw it; times in seconds from sending the player's line."""

    turn: str
    text: str
    ttft_s: float
    """to the first streamed text (the final line when nothing was streamed)"""
    done_s: float
    """to the final line"""
    fallback: bool
    agent_ttft_s: float
    """the time to first token the agent measured (the server's ``ttft_s``)"""


class ProtocolError(RuntimeError):
    """The server answered with an error message, or with something the protocol does not allow."""


class WsClient:
    """One WebSocket connection to ``npcrl serve``; one request at a time."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.last_send = 0.0

    @classmethod
    async def connect(cls, url: str) -> WsClient:
        # no keepalive pings: on a loaded machine a late pong would close a healthy connection
        client = cls(await websockets.connect(url, ping_interval=None, max_size=1 << 20))
        await client.request({"type": "hello", "protocol": 1}, "welcome")
        return client

    async def close(self) -> None:
        await self.connection.close()

    async def receive(self) -> dict[str, Any]:
        message = json.loads(await self.connection.recv())
        if message.get("type") == "error":
            raise ProtocolError(f"server error {message.get('code')}: {message.get('message')}")
        return message

    async def send(self, message: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, self.last_send + SEND_GAP_S - time.perf_counter()))
        self.last_send = time.perf_counter()
        await self.connection.send(json.dumps(message))

    async def request(self, message: dict[str, Any], answer: str) -> dict[str, Any]:
        await self.send(message)
        reply = await self.receive()
        if reply.get("type") != answer:
            raise ProtocolError(f"expected {answer!r} after {message['type']!r}, got {reply!r}")
        return reply

    async def open(self, conversation: str, npc: str, player: str) -> None:
        await self.request({"type": "open", "conversation": conversation, "npc": npc, "player": player}, "opened")

    async def end(self, conversation: str) -> None:
        await self.request({"type": "end", "conversation": conversation}, "ended")

    async def event(self, conversation: str, kind: str, value: float) -> None:
        await self.request({"type": "event", "conversation": conversation, "kind": kind, "value": value}, "recorded")

    async def say(self, conversation: str, text: str) -> LineTiming:
        await self.send({"type": "say", "conversation": conversation, "text": text})
        start = self.last_send
        first: float | None = None
        while True:
            message = await self.receive()
            now = time.perf_counter() - start
            if message.get("type") == "delta" and message.get("text"):
                first = now if first is None else first
            elif message.get("type") == "line":
                return LineTiming(
                    turn=str(message["turn"]),
                    text=str(message["text"]),
                    ttft_s=now if first is None else first,
                    done_s=now,
                    fallback=bool(message["fallback"]),
                    agent_ttft_s=float(message.get("ttft_s", 0.0)),
                )
            elif message.get("type") != "delta":
                raise ProtocolError(f"unexpected message during a line: {message!r}")
