"""KV pool bookkeeping under any order of operations, and its fair wait line for slots."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from npcrl.errors import GenerationError
from npcrl.runtime.bundle import KVLayout
from npcrl.runtime.kvcache import KVPool, SlotCache, SlotWait, SlotWaitCancelled

LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=2)
HANG_GUARD_S = 120.0


def make_pool(slots: int, queue_limit: int = 1024) -> KVPool:
    return KVPool(LAYOUT, slots, capacity=16, queue_limit=queue_limit)


def wait_until(check, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class PoolMachine(RuleBasedStateMachine):
    """One thread drives a 3-slot pool; the model is which caches it holds and which it pinned."""

    def __init__(self) -> None:
        super().__init__()
        # drop_and_collect's gc.collect() would walk the whole heap of the test process (tens of
        # seconds after torch tests ran); freezing what predates this example leaves it only the
        # example's own objects, the caches it must find collected among them.
        gc.freeze()
        self.pool = make_pool(3)
        self.held: list[SlotCache] = []
        self.pinned: dict[int, int] = {}  # id(cache) -> pins this machine holds on it
        self.gone: list[SlotCache] = []  # released caches, kept referenced to check they stay dead

    def _fill(self, cache: SlotCache, n: int) -> None:
        slot = cache.slot
        assert slot is not None
        for array in self.pool.arrays:
            array[slot, :, :n] = float(slot + 1)
        cache.token_ids = list(range(n))

    def _pinnable(self) -> bool:
        return sum(1 for c in self.held if self.pinned.get(id(c))) < self.pool.slots

    @precondition(lambda self: self._pinnable())
    @rule(n=st.integers(0, 8), pin=st.booleans())
    def acquire(self, n: int, pin: bool) -> None:
        cache = self.pool.acquire(pin=pin)
        self._fill(cache, n)
        self.held.append(cache)
        if pin:
            self.pinned[id(cache)] = 1

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data) -> None:
        cache = data.draw(st.sampled_from(self.held))
        pins = self.pinned.pop(id(cache), 0)
        cache.release()
        if pins:  # a pinned cache stays until its last unpin
            assert cache.alive
            for _ in range(pins):
                self.pool.unpin(cache)
        assert not cache.alive
        self.held.remove(cache)
        self.gone.append(cache)

    @precondition(lambda self: any(c.alive for c in self.held))
    @rule(data=st.data())
    def pin(self, data) -> None:
        cache = data.draw(st.sampled_from([c for c in self.held if c.alive]))
        self.pool.pin(cache)
        self.pinned[id(cache)] = self.pinned.get(id(cache), 0) + 1

    @precondition(lambda self: self.pinned)
    @rule(data=st.data())
    def unpin(self, data) -> None:
        cache = data.draw(st.sampled_from([c for c in self.held if self.pinned.get(id(c))]))
        self.pool.unpin(cache)
        self.pinned[id(cache)] -= 1
        if not self.pinned[id(cache)]:
            del self.pinned[id(cache)]

    @precondition(lambda self: self._pinnable() and any(c.alive for c in self.held))
    @rule(data=st.data(), via_copy=st.booleans())
    def seed_or_copy(self, data, via_copy: bool) -> None:
        source = data.draw(st.sampled_from([c for c in self.held if c.alive]))
        expected = [a[source.slot, :, : len(source)].copy() for a in self.pool.arrays]
        ids = list(source.token_ids)
        fork = self.pool.copy(source) if via_copy else self.pool.seed(source.freeze())
        assert fork.token_ids == ids
        for array, want in zip(self.pool.arrays, expected, strict=True):
            np.testing.assert_array_equal(array[fork.slot, :, : len(ids)], want)
        self.held.append(fork)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def drop_and_collect(self, data) -> None:
        cache = data.draw(st.sampled_from([c for c in self.held if not self.pinned.get(id(c))] or [None]))
        if cache is None:
            return
        self.held.remove(cache)
        del cache
        gc.collect()

    def teardown(self) -> None:
        gc.unfreeze()

    @invariant()
    def bookkeeping_is_sound(self) -> None:
        assert self.pool.invariant_violations() == []
        free, owned, _ = self.pool.usage()
        assert free + owned == self.pool.slots
        live = [c for c in self.held if c.alive]
        assert owned == len(live), "a slot has an owner that is not a live cache"
        assert len({c.slot for c in live}) == len(live), "two live caches share a slot"

    @invariant()
    def pinned_caches_are_never_evicted(self) -> None:
        for cache in self.held:
            if self.pinned.get(id(cache)):
                assert cache.alive

    @invariant()
    def released_caches_stay_dead(self) -> None:
        assert not any(c.alive for c in self.gone)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_release_while_pinned_waits_for_the_last_unpin():
    pool = make_pool(1)
    cache = pool.acquire(pin=True)
    cache.release()  # e.g. a conversation ended while its cache is mid-pass
    assert cache.alive and cache.slot == 0
    pool.unpin(cache)
    assert not cache.alive and pool.usage() == (1, 0, 0)


def test_waiters_get_slots_first_come_first_served():
    pool = make_pool(1)
    holder = pool.acquire(pin=True)
    order: list[int] = []

    def take(i: int) -> None:
        cache = pool.acquire(pin=True)
        order.append(i)
        pool.release(cache)
        pool.unpin(cache)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for i, thread in enumerate(threads):
        thread.start()
        wait_until(lambda i=i: len(pool.queue) == i + 1, f"waiter {i} in line")
    holder.release()
    pool.unpin(holder)
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert order == [0, 1, 2, 3]
    assert pool.usage() == (1, 0, 0) and pool.queue.max_seen == 4


def test_the_wait_line_is_bounded_and_cancellable():
    pool = make_pool(1, queue_limit=1)
    holder = pool.acquire(pin=True)
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def wait_in_line() -> None:
        try:
            pool.acquire(wait=SlotWait(cancelled=cancel.is_set))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait_in_line)
    thread.start()
    wait_until(lambda: len(pool.queue) == 1, "the first waiter")
    with pytest.raises(GenerationError, match="kv_queue_limit=1"):
        pool.acquire()
    cancel.set()
    thread.join(HANG_GUARD_S)
    assert len(outcome) == 1 and isinstance(outcome[0], SlotWaitCancelled)
    assert len(pool.queue) == 0 and holder.alive


def test_a_thread_never_waits_on_its_own_pins():
    pool = make_pool(2)
    a, b = pool.acquire(pin=True), pool.acquire(pin=True)
    with pytest.raises(GenerationError, match="pinned by the thread"):
        pool.acquire()
    pool.unpin(a)
    assert pool.acquire().alive and not a.alive and b.alive
