"""StepScheduler: one pass at a time, concurrent batchable steps merged, errors to their owners."""

from __future__ import annotations

import threading
import time

from npcrl.runtime.scheduler import Job, StepScheduler, next_round


class Recorder:
    """A fake model: counts passes in flight and records what each pass ran."""

    def __init__(self, work_s: float = 0.01) -> None:
        self.work_s = work_s
        self.in_flight = 0
        self.most_in_flight = 0
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def _enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def single(self, value: int) -> int:
        self._enter()
        time.sleep(self.work_s)
        self._leave()
        return value * 10

    def batch(self, jobs: list[Job]) -> list[int]:
        self._enter()
        time.sleep(self.work_s)
        self._leave()
        self.batches.append([job.payload for job in jobs])
        return [job.payload * 10 for job in jobs]


def run_threads(n: int, target) -> list:
    results: list = [None] * n
    errors: list = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except Exception as exc:  # recorded for the assertion
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return [results, errors]


def test_concurrent_steps_are_merged_and_passes_never_overlap():
    model = Recorder()
    scheduler = StepScheduler(model.batch, gather_s=0.05)
    steps = 6
    for _ in range(4):
        scheduler.begin_sequence()

    def sequence(i: int) -> list[int]:
        got = []
        for step in range(steps):
            value = 100 * i + step
            got.append(scheduler.submit(Job(lambda v=value: model.single(v), batch_key="pool", payload=value)))
        scheduler.end_sequence()
        return got

    results, errors = run_threads(4, sequence)
    assert errors == [None] * 4
    assert results == [[(100 * i + s) * 10 for s in range(steps)] for i in range(4)]
    assert model.most_in_flight == 1  # one pass at a time
    assert scheduler.batched_passes > 0 and scheduler.batched_rows > scheduler.batched_passes
    assert max(len(b) for b in model.batches) == 4  # the gather window let all four join
    merged = [value for batch in model.batches for value in batch]
    assert len(merged) == len(set(merged))  # no step ran twice


def test_a_lone_sequence_does_not_wait_for_the_gather_window():
    model = Recorder(work_s=0.0)
    scheduler = StepScheduler(model.batch, gather_s=120.0)  # a step that waited the window would take minutes
    scheduler.begin_sequence()
    started = time.perf_counter()
    for step in range(5):
        assert scheduler.submit(Job(lambda v=step: model.single(v), batch_key="pool", payload=step)) == step * 10
    assert time.perf_counter() - started < 60  # five steps, not five two-minute windows
    scheduler.end_sequence()


def test_errors_reach_only_the_jobs_that_failed():
    model = Recorder(work_s=0.005)
    scheduler = StepScheduler(model.batch, gather_s=0.0)

    def boom() -> int:
        raise ValueError("broken pass")

    def target(i: int) -> int:
        if i == 1:
            return scheduler.submit(Job(boom))
        return scheduler.call(lambda: model.single(i))

    results, errors = run_threads(3, target)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(errors[1], ValueError) and errors[0] is None and errors[2] is None
    # the scheduler is usable afterwards
    assert scheduler.call(lambda: 7) == 7


def test_a_failing_batch_fails_each_of_its_jobs():
    def bad_batch(jobs: list[Job]) -> list[int]:
        raise RuntimeError("kernel failed")

    scheduler = StepScheduler(bad_batch, gather_s=0.2)
    for _ in range(2):
        scheduler.begin_sequence()
    results, errors = run_threads(2, lambda i: scheduler.submit(Job(lambda: i, batch_key="pool", payload=i)))
    # both joined one batch (the window waits for both), so both see its error
    assert all(isinstance(e, RuntimeError) for e in errors), (results, errors)
    assert scheduler.call(lambda: "still running") == "still running"


def test_a_round_runs_every_decode_step_and_one_other_job_while_lines_are_decoding():
    single = [Job(lambda: None) for _ in range(3)]
    decode = [Job(lambda: None, batch_key="pool") for _ in range(2)]
    queue = [single[0], decode[0], single[1], decode[1], single[2]]
    assert next_round(queue, batching=True) == ([single[0], decode[0], decode[1]], [single[1], single[2]])
    assert next_round(single, batching=True) == (single, [])  # nobody decoding: nothing to starve
    assert next_round(queue, batching=False) == (queue, [])


def test_prefill_chunks_of_new_lines_do_not_starve_lines_already_decoding():
    """Two lines decode while six newly admitted NPCs each queue a prefill chunk: each decode
    pass waits for one chunk at most, never for all of them in one go."""
    order: list[str] = []
    first_pass = threading.Event()
    scheduler = StepScheduler(lambda jobs: [order.append("decode"), first_pass.set(), [None] * len(jobs)][2], 120.0)
    for _ in range(2):
        scheduler.begin_sequence()

    def decoding(_: int) -> None:
        for _ in range(20):
            scheduler.submit(Job(lambda: None, batch_key="pool"))
        scheduler.end_sequence()

    def prefill(_: int) -> None:
        first_pass.wait(60)
        scheduler.call(lambda: (order.append("chunk"), time.sleep(0.001)))

    workers = [threading.Thread(target=decoding, args=(i,)) for i in range(2)]
    workers += [threading.Thread(target=prefill, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    last_decode = len(order) - order[::-1].index("decode")
    while_decoding = "".join("c" if step == "chunk" else "d" for step in order[:last_decode])
    assert "cc" not in while_decoding
    assert order.count("chunk") == 6 and order.count("decode") == 20
