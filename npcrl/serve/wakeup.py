"""News from worker threads to the event loop, pushed as it happens rather than polled for.

A turn's text is produced in its worker thread; the connection that streams it lives on the
event loop. Polling a ``PendingLine`` every few milliseconds would add half the polling period to
every line's time to first token (and wake the loop for nothing); instead the worker's
``PendingLine.on_change`` callback schedules a wake-up on the loop, which costs microseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from npcrl.agent.pending import PendingLine


class ThreadSignal:
    """A wake-up for one task of the running event loop that any thread may give."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set(self) -> None:
        """Wake the waiting task (safe from any thread; a no-op once the loop has closed)."""
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until set, then clear it; False if ``timeout_s`` passed first."""
        if timeout_s is None:
            await self._event.wait()
        else:
            try:
                await asyncio.wait_for(self._event.wait(), timeout_s)
            except asyncio.TimeoutError:
                return False
        self._event.clear()
        return True


async def line_text(pending: PendingLine, idle_s: float | None = None) -> AsyncIterator[str]:
    """The streamed text of ``pending``, each piece as soon as its worker pushes it; ends once the
    line is finished (its last text first). With ``idle_s``, yields ``""`` after that many seconds
    without news (a caller may send a keepalive)."""
    signal = ThreadSignal()
    remove = pending.on_change(signal.set)
    try:
        while True:
            finished = pending.done  # read before poll: text pushed before finish is then polled
            text = pending.poll()
            if text:
                yield text
            if finished:
                return
            if not await signal.wait(idle_s):
                yield ""
    finally:
        remove()
