"""``Readiness``: background work a game can poll each frame, wait for, or ``await``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Generator
from typing import Any

from npcrl.agent.workers import start_worker

log = logging.getLogger("npcrl.agent.readiness")


class Readiness:
    """Work running in a worker thread. ``done`` never blocks (poll it from the game loop);
    ``wait(timeout)`` blocks up to ``timeout``; ``result()`` re-raises what the work raised, so an
    error is reported to whoever asks, never lost in the thread; ``await readiness`` works in asyncio."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._future.set_running_or_notify_cancel()
        self._work = work
        start_worker(self._run, name)

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # handed to result(); nothing leaves the thread
            log.warning("background work failed: %s: %s", type(exc).__name__, exc)
            self._future.set_exception(exc)
        else:
            self._future.set_result(None)

    @property
    def done(self) -> bool:
        """True once the work has finished, whether it succeeded or failed."""
        return self._future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work has finished or ``timeout`` ran out; True if it finished."""
        concurrent.futures.wait([self._future], timeout)
        return self._future.done()

    def result(self, timeout: float | None = None) -> None:
        """Block until the work has finished; raise what it raised (``TimeoutError`` if ``timeout``
        ran out first)."""
        try:
            self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("the background work has not finished yet") from None

    def exception(self) -> BaseException | None:
        """What the finished work raised, or None (also while it runs)."""
        return self._future.exception() if self._future.done() else None

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.wrap_future(self._future).__await__()
