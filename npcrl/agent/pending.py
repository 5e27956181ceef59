"""What a turn gives the game: the finished ``NpcLine``, and the ``PendingLine`` it polls meanwhile."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from npcrl.runtime.generation import CancelToken, GenerationResult

log = logging.getLogger("npcrl.agent.pending")


@dataclass(frozen=True)
class NpcLine:
    """A finished NPC turn as the game shows it."""

    turn_index: int
    text: str
    filtered: bool
    fallback: bool
    filter_reason: str | None
    latency_s: float
    time_to_first_token_s: float
    stop_reason: str
    generation: GenerationResult | None = None
    queue_s: float = 0.0
    """time the turn waited before its own work: for a KV slot while others generated, and for the
    persona's prefix (included in ``time_to_first_token_s``)"""


class PendingLine:
    """An NPC turn generating in a worker thread. Poll it from the game loop; it never blocks.

    The turn's worker feeds it with ``push_text`` and ``finish``; the game only reads it. Code
    that would rather be told than poll (a server's event loop) registers a callback with
    ``on_change``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streamed: list[str] = []
        self._polled = 0
        self._done = threading.Event()
        self._line: NpcLine | None = None
        self._listeners: list[Callable[[], None]] = []
        self.cancel_token = CancelToken()

    def push_text(self, piece: str) -> None:
        """More streamed text (the turn's worker calls this)."""
        with self._lock:
            self._streamed.append(piece)
            listeners = list(self._listeners)
        _notify(listeners)

    def finish(self, line: NpcLine) -> None:
        """The turn is over (the turn's worker calls this once)."""
        with self._lock:
            self._line = line
            self._done.set()
            listeners, self._listeners = self._listeners, []
        _notify(listeners)

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever text arrives and once the line is finished (at once if it
        already is); returns a function that unregisters it. The callback runs in the turn's
        worker thread, so it must be quick and must not block: hand the news to your own thread
        (``loop.call_soon_threadsafe``). An exception it raises is logged and ignored."""
        with self._lock:
            finished = self._done.is_set()
            if not finished:
                self._listeners.append(callback)
        if finished:
            _notify([callback])

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def started(self) -> bool:
        """True once the first text arrived (a game shows a 'thinking' indicator until then)."""
        with self._lock:
            return bool(self._streamed) or self.done

    def poll(self) -> str:
        """Streamed text that arrived since the previous poll (raw model text, special tokens removed)."""
        with self._lock:
            new = "".join(self._streamed[self._polled :])
            self._polled = len(self._streamed)
        return new

    @property
    def streamed_text(self) -> str:
        with self._lock:
            return "".join(self._streamed)

    def cancel(self) -> None:
        """Stop generating; the turn ends with a fallback line (the player left, or the game needs the CPU)."""
        self.cancel_token.cancel()

    def result(self, timeout: float | None = None) -> NpcLine:
        """The finished line; blocks up to ``timeout`` (use ``done`` in a game loop)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the NPC line is not finished yet")
        assert self._line is not None
        return self._line


def _notify(listeners: list[Callable[[], None]]) -> None:
    """Call each listener; one that fails must not stop the turn's worker or the others."""
    for listener in listeners:
        try:
            listener()
        except Exception:
            log.exception("a PendingLine listener failed")
