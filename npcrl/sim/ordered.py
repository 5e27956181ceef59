"""Conversations played in worker threads, logged and reported in conversation order.

A conversation's records are held in a ``RecordBuffer`` until every earlier conversation's are in
the log, so the log reads as a serial run's: ``npcrl eval`` reads the first turns for its KL and
bootstraps over conversations in log order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from npcrl.errors import NpcrlError
from npcrl.playlog import PlayLogWriter, Record

log = logging.getLogger(__name__)
Result = TypeVar("Result")


class RecordBuffer:
    """One conversation's records, held until the conversations before it are logged."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, record: Record) -> None:
        self.records.append(record)

    def flush_to(self, log_writer: PlayLogWriter) -> None:
        """Append the held records to the log and forget them."""
        for record in self.records:
            try:
                log_writer.append(record)
            except NpcrlError:  # as the agent does: a refused record does not stop the run
                log.exception("play log refused a %s record", type(record).__name__)
        self.records.clear()


def play_concurrently(
    play: Callable[[int, RecordBuffer | None], Result],
    conversations: Sequence[int],
    workers: int,
    log_writer: PlayLogWriter | None,
    finish: Callable[[Result], None],
) -> None:
    """Run ``play`` for every conversation index in ``conversations`` (ascending) in ``workers``
    threads; log and ``finish`` the results in conversation order as they become available.
    ``play`` gets a buffer for the conversation's records (None when nothing is logged)."""
    failed = threading.Event()

    def job(k: int, buffer: RecordBuffer) -> Result | None:
        if failed.is_set():  # only after a failure in an earlier conversation, which is raised first
            return None
        try:
            return play(k, buffer if log_writer is not None else None)
        except BaseException:
            failed.set()
            raise

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npcrl-sim")
    try:
        jobs: list[tuple[Future[Result | None], RecordBuffer]] = []
        for k in conversations:
            buffer = RecordBuffer()
            jobs.append((executor.submit(job, k, buffer), buffer))
        for future, buffer in jobs:
            result = future.result()
            assert result is not None
            if log_writer is not None:
                buffer.flush_to(log_writer)
            finish(result)
    finally:
        failed.set()  # an error here (or in a callback): start no more conversations
        executor.shutdown(wait=True, cancel_futures=True)
