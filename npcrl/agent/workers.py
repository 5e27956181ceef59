"""The agent's worker threads (turns, typing prefills, warm-ups), and the wait for them at exit.

A daemon thread killed inside onnxruntime at interpreter exit aborts the process, so exit waits
for the workers still running (each is bounded: a turn by its time budget).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable

EXIT_WAIT_S = 30.0
"""how long interpreter exit waits, in all, for workers still running"""

_WORKERS: set[threading.Thread] = set()
_WORKERS_LOCK = threading.Lock()


def start_worker(work: Callable[[], None], name: str) -> threading.Thread:
    """Run ``work`` in a new daemon thread that exit waits for."""
    worker = threading.Thread(target=_tracked, args=(work,), name=name, daemon=True)
    with _WORKERS_LOCK:
        _WORKERS.add(worker)
    worker.start()
    return worker


def _tracked(work: Callable[[], None]) -> None:
    try:
        work()
    finally:
        with _WORKERS_LOCK:
            _WORKERS.discard(threading.current_thread())


def running_workers() -> int:
    """Worker threads still running."""
    with _WORKERS_LOCK:
        return len(_WORKERS)


def join_workers(timeout_s: float = EXIT_WAIT_S) -> None:
    """Wait, at most ``timeout_s`` in all, for the workers running now."""
    deadline = time.monotonic() + timeout_s
    with _WORKERS_LOCK:
        workers = list(_WORKERS)
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


atexit.register(join_workers)
