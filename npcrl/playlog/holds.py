"""Records still on their way to a play-log writer, which its ``close()`` waits for.

A game's natural shutdown closes the log while an NPC turn may still be finishing; the turn takes
a hold when it starts and releases it once its record is appended, so the close waits for that
record instead of refusing it. The wait is bounded: a turn is bounded by its time budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

HOLD_WAIT_S = 30.0
"""the longest ``close()`` waits for held records"""


class Holds:
    """A count of held records and the wait for it to reach zero."""

    def __init__(self) -> None:
        self._count = 0
        self._gone = threading.Condition()
        self._closing = False

    def hold(self) -> Callable[[], None]:
        """Take a hold; returns its release (idempotent). Once closing, holds are no longer counted."""
        with self._gone:
            if self._closing:
                return lambda: None
            self._count += 1
        released = threading.Event()

        def release() -> None:
            with self._gone:
                if not released.is_set():
                    released.set()
                    self._count -= 1
                    self._gone.notify_all()

        return release

    def wait(self, timeout_s: float = HOLD_WAIT_S) -> None:
        """Wait until no hold is left (at most ``timeout_s``); later holds are not counted."""
        deadline = time.monotonic() + timeout_s
        with self._gone:
            if self._closing:
                return  # a second close: the first one has waited already
            while self._count and (left := deadline - time.monotonic()) > 0:
                self._gone.wait(left)
            self._closing = True
