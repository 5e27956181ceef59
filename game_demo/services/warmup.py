"""Warm each NPC up in the background, one at a time: ``NpcAgent.warm_up()`` computes its persona
prefix (its system turn's KV cache) and runs one decode step from it.

The persona is most of every prompt (about 600 tokens for the shipped cards) and its prefill
takes seconds on a small CPU; npcrl computes it once per persona and bundle. Doing that at start-up
and right after a hot swap, instead of in the first turn, turns a ~5 s "thinking…" into the
usual fraction of a second. A turn that starts meanwhile simply waits for that NPC's prefix.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("game_demo.warmup")


class WarmingUp(Protocol):
    def result(self, timeout: float | None = None) -> None: ...


class Warmable(Protocol):
    def warm_up(self) -> WarmingUp: ...


class Prewarmer:
    """One background thread; a new request (after a swap) replaces a pending one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: tuple[Warmable, ...] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="game-demo-warmup", daemon=True)
        self._thread.start()

    def start(self, agents: Sequence[Warmable]) -> None:
        """Warm ``agents`` up with the model each holds now (call it again after a swap)."""
        with self._lock:
            self._request = tuple(agents)
            self._progress = (0, len(agents))
        self._wake.set()

    @property
    def status(self) -> str:
        with self._lock:
            if self._progress is None:
                return ""
            done, total = self._progress
        return f"preparing NPC voices {done}/{total}…"

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._progress is not None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=1)  # a prefill in progress cannot be interrupted; the thread is a daemon

    def _take(self) -> tuple[Warmable, ...] | None:
        with self._lock:
            request, self._request = self._request, None
            return request

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            request = self._take()
            while request is not None and not self._stop.is_set():
                agents = request
                for done, agent in enumerate(agents, 1):
                    try:  # one NPC at a time: parallel prefills would take the cores the frame loop needs
                        agent.warm_up().result()
                    except Exception as exc:  # the turn itself will retry and fall back if it must
                        log.warning("could not prepare an NPC's persona prefix: %s", exc)
                    with self._lock:
                        if self._request is not None:
                            break  # a swap asked for another model: warm that one instead
                        self._progress = (done, len(agents))
                request = self._take()
            with self._lock:
                if self._request is None:
                    self._progress = None
