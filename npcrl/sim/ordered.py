"""Conversations played in worker threads, logged and reported in conversation order.

A conversation's records are held in a ``RecordBuffer`` until every earlier conversation's are in
the log, so the log reads as a serial run's: ``npcrl eval`` reads the first turns for its KL and
bootstraps over conversations in log order. ``session_options_for`` and ``max_concurrency`` size a
model's KV slots for that many conversations at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from npcrl.errors import NpcrlError
from npcrl.playlog import PlayLogWriter, Record
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.session import SessionOptions

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


def session_options_for(concurrency: int) -> SessionOptions:
    """onnxruntime settings for a model that plays ``concurrency`` conversations at once: enough KV
    slots (twice the conversations, at least the default) that ``max_concurrency`` allows them
    all, and prompts prefilled whole. A game prefills in chunks while other NPCs speak, so that
    their next tokens are not held up; but a chunked prefill rounds differently from a whole one
    (other matrix shapes), and a near-tie at one token then makes a conversation differ from the
    serial run's. Whole prefills keep every conversation the same at any concurrency (a batched
    decode step is exact: tested)."""
    default = SessionOptions()
    return replace(default, kv_slots=max(default.kv_slots, 2 * concurrency), prefill_chunk=0)


def max_concurrency(model: OnnxCausalLM) -> int:
    """How many conversations ``simulate`` plays at once on ``model`` at most: half its KV slots.

    Each live conversation keeps one slot between turns, and computing a persona prefix takes
    another for a moment; with at most half the slots in use nothing is evicted, so no
    conversation has to prefill its history again. Models without a slot pool have no cap."""
    pool = model.pool
    return max(1, pool.slots // 2) if pool is not None else 1 << 30
