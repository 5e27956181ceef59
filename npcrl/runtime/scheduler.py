"""One forward pass at a time per model, with concurrent decode steps merged into one batch.

Several NPCs generating at once each call ``forward`` from their own thread. Running their
passes concurrently on a small CPU only makes them fight over cores (and starves the game's
frame thread); running them one after another wastes the fact that a one-token decode step is
bound by reading the weights, which a batch of rows reads once. So every pass goes through a
``StepScheduler``: the thread that finds it idle becomes the leader, waits up to ``gather_s``
for the other generating sequences' next steps, then runs a round — one-token steps of pool
slots as one batched pass, anything else (prefill chunks, cache copies) on its own — and hands
each waiting thread its result (group commit). A single NPC never waits: with one sequence
generating there is nothing to gather.

While decode steps are waiting, a round runs at most one other job (the oldest): a generating
line then waits for one prefill chunk per token, not for every queued chunk of every NPC that
was just admitted. Under many conversations (a server with more players than cores) that keeps
the lines already speaking at a steady pace, within their time budget, while newly admitted
ones prefill a chunk per round; with no decode step waiting, every queued job runs at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """A unit of work for the leader. ``batch_key`` marks jobs that may run together."""

    run: Callable[[], Any]
    batch_key: object | None = None
    payload: Any = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    batch_size: int = field(default=1)


class StepScheduler:
    def __init__(
        self,
        run_batch: Callable[[list[Job]], list[Any]] | None = None,
        gather_s: float = 0.003,
    ) -> None:
        self._run_batch = run_batch
        self.gather_s = gather_s
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._busy = False
        self._active = 0
        self.passes = 0
        """passes (and copies) run"""
        self.batched_passes = 0
        """passes that merged several sequences' decode steps"""
        self.batched_rows = 0
        """decode steps that ran inside those merged passes"""

    # ------------------------------------------------------------------ who is generating

    def begin_sequence(self) -> None:
        """A sequence starts generating: its steps are worth waiting for when gathering a batch."""
        with self._cond:
            self._active += 1

    def end_sequence(self) -> None:
        with self._cond:
            self._active = max(0, self._active - 1)
            self._cond.notify_all()

    @property
    def active_sequences(self) -> int:
        return self._active

    # ------------------------------------------------------------------ running

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with no other pass or copy in flight on this model."""
        return self.submit(Job(fn))

    def submit(self, job: Job) -> Any:
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()
            while not job.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                self._gather()
                jobs, self._queue = next_round(self._queue, self._run_batch is not None)
                self._cond.release()
                try:
                    self._execute(jobs)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _gather(self) -> None:
        """Wait (lock held, released while waiting) until every generating sequence has queued its
        decode step (other jobs left from an earlier round do not count)."""
        if self._run_batch is None or self.gather_s <= 0:
            return
        deadline = time.perf_counter() + self.gather_s
        while sum(job.batch_key is not None for job in self._queue) < self._active:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _execute(self, jobs: list[Job]) -> None:
        groups: dict[object, list[Job]] = {}
        singles: list[Job] = []
        for job in jobs:
            if job.batch_key is not None and self._run_batch is not None:
                groups.setdefault(job.batch_key, []).append(job)
            else:
                singles.append(job)
        for job in singles:
            self._finish([job], None)
        for group in groups.values():
            self._finish(group, self._run_batch if len(group) > 1 else None)

    def _finish(self, jobs: list[Job], run_batch: Callable[[list[Job]], list[Any]] | None) -> None:
        """Run ``jobs``: one job on its own (``run_batch`` None), or several as one batch."""
        try:
            results = [jobs[0].run()] if run_batch is None else run_batch(jobs)
        except BaseException as exc:  # handed to every waiting caller, never lost in the leader
            for job in jobs:
                job.error, job.done = exc, True
            return
        self.passes += 1
        if len(jobs) > 1:
            self.batched_passes += 1
            self.batched_rows += len(jobs)
        for job, result in zip(jobs, results, strict=True):
            job.result, job.done = result, True
            job.batch_size = len(jobs)


def next_round(queue: list[Job], batching: bool) -> tuple[list[Job], list[Job]]:
    """(jobs to run now, jobs left queued): every decode step, and at most the oldest other job
    while decode steps wait (``batching``: the scheduler merges them); everything without them."""
    decoding = batching and any(job.batch_key is not None for job in queue)
    if not decoding:
        return queue, []
    run: list[Job] = []
    kept: list[Job] = []
    other_taken = False
    for job in queue:
        if job.batch_key is not None:
            run.append(job)
        elif not other_taken:
            run.append(job)
            other_taken = True
        else:
            kept.append(job)
    return run, kept
