"""``npcrl serve`` as a game launcher runs it: a subprocess that prints its address first, serves
a conversation, and on SIGTERM or SIGINT ends open conversations and closes its play log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serve_helpers import HANG_GUARD_S, Client, log_records
from websockets.sync.client import connect

from npcrl.playlog.records import ConversationEnd, NpcTurn

LISTENING = "npcrl serve: listening on http://127.0.0.1:"


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "npcrl.cli", "serve", *args]


@contextmanager
def serving(bundle: Path, logs: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        serve_command("--bundle", str(bundle), "--port", "0", "--logs", str(logs), "--kv-slots", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(LISTENING), first + process.stderr.read() if process.stderr else first
        yield process, int(first.strip().rsplit(":", 1)[1])
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=HANG_GUARD_S)


def wait_ready(port: int) -> dict:
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=HANG_GUARD_S) as response:
            body = json.loads(response.read())
        if body["status"] == "ready" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_its_port_serves_and_shuts_down_cleanly(tiny_bundle: Path, tmp_path: Path, stop) -> None:
    logs = tmp_path / "logs"
    with serving(tiny_bundle, logs) as (process, port):
        assert wait_ready(port)["status"] == "ready"
        with connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=HANG_GUARD_S) as ws:
            talk = Client(ws)
            talk.open("c1")
            assert talk.say("c1", "Hello")[0]["text"]
            talk.open("c2")  # still open when the server is told to stop
            process.send_signal(stop)
            process.wait(HANG_GUARD_S)
    records = log_records(logs)
    assert len([r for r in records if isinstance(r, NpcTurn)]) == 1
    assert sorted(r.reason for r in records if isinstance(r, ConversationEnd)) == ["disconnected", "disconnected"]


def test_serve_refuses_a_host_off_loopback_without_a_token(tiny_bundle: Path, tmp_path: Path) -> None:
    command = serve_command("--bundle", str(tiny_bundle), "--host", "0.0.0.0", "--port", "0")
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, env=dict(os.environ))
    assert result.returncode == 2 and "--token" in result.stderr and result.stdout == ""


def test_serve_refuses_a_missing_bundle(tmp_path: Path) -> None:
    command = serve_command("--bundle", str(tmp_path / "nope"), "--port", "0")
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 2 and "no such bundle" in result.stderr


def test_serve_leaves_a_core_free_on_a_small_machine_and_flags_win() -> None:
    """On at most two cores onnxruntime gets one thread and no spinning, so the server's event loop
    (and the game beside it) always has a core to send each line's text the moment it exists."""
    from npcrl.cli.serve import thread_settings

    assert thread_settings(None, None, cores=2) == {"intra_op_threads": 1, "allow_spinning": False}
    assert thread_settings(None, None, cores=1) == {"intra_op_threads": 1, "allow_spinning": False}
    assert thread_settings(None, None, cores=4) == {"intra_op_threads": None, "allow_spinning": True}
    assert thread_settings(2, True, cores=2) == {"intra_op_threads": 2, "allow_spinning": True}
    assert thread_settings(None, False, cores=8) == {"intra_op_threads": None, "allow_spinning": False}


def test_serve_thread_flags_parse() -> None:
    from npcrl.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--threads", "2", "--no-spin"])
    assert (args.threads, args.spin) == (2, False)
    args = build_parser().parse_args(["serve"])
    assert (args.threads, args.spin) == (None, None)
