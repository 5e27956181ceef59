"""A fair, bounded wait line for KV pool slots.

More conversations may talk at once than a model has KV slots. A sequence that needs a slot
while every slot is generating waits here instead of failing: first come, first served, and at
most ``limit`` waiters (beyond that the game is far past normal use and gets a clear error).
The line lives on the pool's own condition, so granting a slot and taking it are one atomic step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from npcrl.errors import GenerationError

POLL_S = 0.05
"""how often a waiter re-checks its cancel token (a granted slot wakes it at once)"""


class SlotWaitCancelled(GenerationError):
    """The sequence was cancelled while it waited for a KV slot."""


@dataclass
class SlotWait:
    """How one sequence waits for slots: its cancel check, and the time it has waited so far."""

    cancelled: Callable[[], bool] | None = None
    waited_s: float = 0.0


class FairQueue:
    """FIFO tickets on ``cond``; every method is called with ``cond`` held."""

    def __init__(self, cond: threading.Condition, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError(f"a slot wait line needs a limit >= 1, got {limit}")
        self._cond = cond
        self.limit = limit
        self._what = what
        self._tickets: deque[object] = deque()
        self.max_seen = 0
        """most waiters at once (a statistic for benchmarks)"""

    def __len__(self) -> int:
        return len(self._tickets)

    def wait(
        self,
        ready: Callable[[], bool],
        wait: SlotWait | None,
        stuck: Callable[[], str | None] | None = None,
    ) -> None:
        """Return once no earlier waiter is left and ``ready()`` holds. ``stuck()`` names why
        waiting can never succeed (the caller itself holds what it waits for), which raises."""
        if not self._tickets and ready():
            return
        if len(self._tickets) >= self.limit:
            raise GenerationError(
                f"{len(self._tickets)} sequences already wait for {self._what} "
                f"(SessionOptions.kv_queue_limit={self.limit}); too many conversations at once"
            )
        ticket = object()
        self._tickets.append(ticket)
        self.max_seen = max(self.max_seen, len(self._tickets))
        started = time.perf_counter()
        try:
            while not (self._tickets[0] is ticket and ready()):
                if wait is not None and wait.cancelled is not None and wait.cancelled():
                    raise SlotWaitCancelled(f"cancelled while waiting for {self._what}")
                reason = stuck() if stuck is not None and self._tickets[0] is ticket else None
                if reason is not None:
                    raise GenerationError(reason)
                self._cond.wait(POLL_S)
        finally:
            self._tickets.remove(ticket)
            self._cond.notify_all()  # the next waiter may be ready now
            if wait is not None:
                wait.waited_s += time.perf_counter() - started
