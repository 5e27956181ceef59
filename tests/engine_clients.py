"""Run engine clients of ``npcrl serve`` against a real server: a tool that is missing skips the
test locally and fails it under CI (``CI`` set), where the engines must be installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from npcrl import read_log_dir
from npcrl.playlog import EngagementEvent, NpcTurn

REPO = Path(__file__).resolve().parents[1]
LISTENING = "npcrl serve: listening on "
HANG_GUARD_S = 300.0  # far above the work: a hang fails the test instead of stalling the run


def require_tool(name: str, why: str = "") -> str:
    """The path of ``name`` on PATH; skips the test without it, or fails it under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed{why}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI installs it (see .ci/run)")
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class RunningServer:
    base_url: str  # http://HOST:PORT
    log_dir: Path

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/v1/ws"


@contextmanager
def npcrl_serve(bundle: Path, work: Path) -> Iterator[RunningServer]:
    """``npcrl serve`` on ``bundle`` and a free port, ready, logging under ``work/logs``. The
    server is stopped with SIGTERM on exit, so its play log is closed before the test reads it."""
    log_dir, stdout, stderr = work / "logs", work / "serve.out", work / "serve.err"
    command = [sys.executable, "-m", "npcrl.cli", "serve", "--bundle", str(bundle), "--port", "0"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen([*command, "--logs", str(log_dir)], stdout=out, stderr=err, cwd=REPO)
    try:
        server = RunningServer(_wait_listening(process, stdout, stderr), log_dir)
        _wait_ready(server.base_url, process, stderr)
        yield server
    finally:
        _stop(process)


def _server_failed(process: subprocess.Popen[bytes], stderr: Path, what: str) -> NoReturn:
    pytest.fail(f"npcrl serve {what} (exit status {process.poll()}):\n{stderr.read_text(errors='replace')[-4000:]}")


def _wait_listening(process: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> str:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        line, newline, _ = stdout.read_text(errors="replace").partition("\n")
        if newline and line.startswith(LISTENING):
            return line[len(LISTENING) :].strip()
        if newline:
            _server_failed(process, stderr, f"printed {line!r} before its address")
        if process.poll() is not None:
            _server_failed(process, stderr, "exited before printing its address")
        time.sleep(0.1)
    _server_failed(process, stderr, "printed no address")


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], stderr: Path) -> None:
    """Waits for /health to say ready, so the model's loading never eats into a client's timeout."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _server_failed(process, stderr, "exited")
        with urllib.request.urlopen(f"{base_url}/health", timeout=30) as response:
            if json.load(response)["status"] == "ready":
                return
        time.sleep(0.2)
    _server_failed(process, stderr, "never became ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_rated_turns_logged(log_dir: Path, turn_ids: list[str]) -> None:
    """Each turn id ("<conversation>:<turn index>") has its NPC turn and a rating in the play log."""
    assert turn_ids, "the client rated no turn"
    records = list(read_log_dir(log_dir))
    turns = {f"{r.conversation_id}:{r.turn_index}" for r in records if isinstance(r, NpcTurn)}
    ratings = {
        f"{r.conversation_id}:{r.turn_index}" for r in records if isinstance(r, EngagementEvent) and r.kind == "rating"
    }
    for turn_id in turn_ids:
        assert turn_id in turns, f"no NPC turn {turn_id} in the play log: {sorted(turns)}"
        assert turn_id in ratings, f"no rating of {turn_id} in the play log: {sorted(ratings)}"
