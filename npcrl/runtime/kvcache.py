"""Where the runtime keeps key/value caches.

Fused graphs (GroupQueryAttention) write each step's keys and values *in place* into a buffer
that is bound as both ``past_*`` input and ``present.*`` output, so nothing is copied per token.
``KVPool`` preallocates those buffers as the rows of one array per layer tensor, shaped
``(slots, kv_heads, capacity, head_dim)``: a ``SlotCache`` owns one row, and concurrent one-token
decode steps of several sequences can run as a single batched pass over adjacent rows.
Every sequence that runs in a slot pins it; a sequence that needs a new slot while every slot is
pinned waits in a fair line (``npcrl.runtime.slotqueue``) instead of failing.
The arrays are zero-filled lazily by the OS, so a slot costs memory only for the positions it
has used (about 46 KB per token for SmolLM2); a pool's worst case is
``slots × capacity × bytes_per_token``. When every slot is taken, the least recently used slot
that is not pinned is evicted: its cache reports ``alive == False`` and its owner starts again
from a prefix. A slot comes back when its cache is released (a release while pinned takes effect
at the last unpin) or garbage collected.

``FrozenCache`` is a compact read-only copy (a persona's system turn) that seeds slots, and
``npcrl.runtime.prefixstore.PrefixStore`` keeps those per token sequence, evicting by LRU within a byte budget.

Traced graphs return new ``present`` tensors each step (``npcrl.runtime.cache.ConcatCache``); they are not batched.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

import numpy as np

from npcrl.errors import GenerationError
from npcrl.runtime.bundle import KVLayout
from npcrl.runtime.cache import ConcatCache, KVCache, common_prefix_length
from npcrl.runtime.slotqueue import FairQueue, SlotWait, SlotWaitCancelled

__all__ = [
    "ConcatCache",
    "FrozenCache",
    "KVCache",
    "KVPool",
    "SlotCache",
    "SlotWait",
    "SlotWaitCancelled",
    "common_prefix_length",
]


class FrozenCache(KVCache):
    """A compact, read-only copy of a fused graph's KV state (arrays ``(1, kv_heads, n, head_dim)``)."""

    def __init__(self, pool: KVPool, arrays: list[np.ndarray], token_ids: list[int]) -> None:
        self.pool = pool
        self.arrays = arrays
        self.token_ids = token_ids

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def fork(self) -> SlotCache:
        return self.pool.seed(self)

    def truncate(self, length: int) -> None:
        raise TypeError("a FrozenCache is read-only: fork() it first")


class SlotCache(KVCache):
    """One row of a ``KVPool``: the graph writes this sequence's keys and values into it in place."""

    def __init__(self, pool: KVPool, slot: int) -> None:
        self.pool = pool
        self.slot: int | None = slot
        self.token_ids: list[int] = []
        self.release_pending = False
        """released while pinned: the slot is freed at the last unpin"""

    @property
    def alive(self) -> bool:
        return self.slot is not None

    def fork(self) -> SlotCache:
        return self.pool.copy(self)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= len(self.token_ids):
            raise ValueError(f"cannot truncate {len(self.token_ids)} tokens to {length}")
        if length < len(self.token_ids):
            del self.token_ids[length:]  # positions past the length are simply overwritten later
            self.last_logits = None

    def freeze(self) -> FrozenCache:
        return self.pool.freeze(self)

    def release(self) -> None:
        self.pool.release(self)  # otherwise the slot frees itself when this object is collected


class KVPool:
    """Preallocated KV rows for a fused graph (see the module docstring).

    Memory writes (seeding, copying) and forward passes must not overlap on a slot; the runtime
    runs both through one serialising scheduler, and ``exclusive`` is the hook it provides. A
    slot being written (seeded, copied, frozen, stepped) is pinned for the whole write, so it is
    never evicted or handed to another cache underneath it. All bookkeeping is under ``_cond``,
    which is never held while waiting on the scheduler.
    """

    def __init__(
        self,
        layout: KVLayout,
        slots: int,
        capacity: int,
        exclusive: Callable[[Callable[[], object]], object] | None = None,
        queue_limit: int = 1024,
    ) -> None:
        if slots < 1 or capacity < 2:
            raise ValueError(f"a KV pool needs >= 1 slot and >= 2 positions, got {slots} and {capacity}")
        self.layout = layout
        self.slots = slots
        self.capacity = capacity
        dtype = np.dtype(layout.dtype)
        shape = (slots, layout.num_kv_heads, capacity, layout.head_dim)
        # np.zeros maps fresh pages lazily: untouched positions cost no resident memory.
        self.arrays = [np.zeros(shape, dtype=dtype) for _ in layout.past_names()]
        self._exclusive = exclusive or (lambda fn: fn())
        self._cond = threading.Condition(threading.RLock())
        self._owners: list[weakref.ref[SlotCache] | None] = [None] * slots
        self._pins: list[list[int]] = [[] for _ in range(slots)]  # ids of the threads pinning each slot
        self._last_used = [0.0] * slots
        self.queue = FairQueue(self._cond, queue_limit, f"one of {slots} KV slots (SessionOptions.kv_slots)")
        self.evictions = 0

    @property
    def max_tokens(self) -> int:
        """Most tokens one sequence may hold: one position stays free for a batched pass's idle rows."""
        return self.capacity - 1

    def bytes_in_use(self) -> int:
        with self._cond:
            caches = [self._owner(slot) for slot in range(self.slots)]
        return sum(len(c) for c in caches if c is not None) * self.layout.bytes_per_token()

    # ------------------------------------------------------------------ bookkeeping (lock held)

    def _owner(self, slot: int) -> SlotCache | None:
        ref = self._owners[slot]
        return ref() if ref is not None else None

    def _available(self) -> bool:
        """A slot can be had now: a free one, or an unpinned one to evict."""
        return any(self._owner(s) is None or not self._pins[s] for s in range(self.slots))

    def _stuck(self) -> str | None:
        """Why waiting for a slot can never end: every pin is the waiting thread's own."""
        me = threading.get_ident()
        pins = [t for slot in range(self.slots) if self._owner(slot) is not None for t in self._pins[slot]]
        if self._available() or not pins or any(t != me for t in pins):
            return None
        return f"all {self.slots} KV slots are pinned by the thread that needs another; raise SessionOptions.kv_slots"

    def _take_slot(self) -> int:
        for slot in range(self.slots):
            if self._owner(slot) is None:  # never used, released, or its cache was collected
                self._owners[slot], self._pins[slot] = None, []
                return slot
        victim = min((s for s in range(self.slots) if not self._pins[s]), key=lambda s: self._last_used[s])
        evicted = self._owner(victim)
        if evicted is not None:
            evicted.slot, evicted.token_ids, evicted.last_logits = None, [], None
        self.evictions += 1
        return victim

    def _free(self, cache: SlotCache) -> None:
        slot = cache.slot
        if slot is not None and self._owner(slot) is cache:
            self._owners[slot], self._pins[slot] = None, []
        cache.slot, cache.token_ids, cache.last_logits = None, [], None
        cache.release_pending = False
        self._cond.notify_all()

    # ------------------------------------------------------------------ slots

    def acquire(self, pin: bool = False, wait: SlotWait | None = None) -> SlotCache:
        """An empty cache in a free slot, evicting the least recently used unpinned slot if none is
        free; while every slot is pinned, waits in line (cancellable through ``wait``)."""
        with self._cond:
            self.queue.wait(self._available, wait, self._stuck)
            slot = self._take_slot()
            cache = SlotCache(self, slot)
            self._owners[slot] = weakref.ref(cache)
            self._pins[slot] = [threading.get_ident()] if pin else []
            self._last_used[slot] = time.monotonic()
            return cache

    def claim(self, cache: SlotCache, wait: SlotWait | None = None) -> bool:
        """Pin ``cache`` for a new sequence, in line behind earlier waiters; False (nothing pinned)
        if it was evicted or released meanwhile."""
        with self._cond:
            self.queue.wait(lambda: True, wait)
            if cache.slot is None or cache.release_pending:
                return False
            self._pin(cache)
            return True

    def hold(self, cache: SlotCache, wait: SlotWait | None = None) -> None:
        """Pin ``cache`` for a pass: at once if it is already pinned (a step of a running
        sequence), else in line like ``claim``."""
        with self._cond:
            if cache.slot is not None and self._pins[cache.slot]:
                self._pin(cache)
                return
            if not self.claim(cache, wait):
                raise GenerationError("this KV cache was evicted or released; start again from a prefix")

    def pin(self, cache: SlotCache) -> None:
        """Keep ``cache`` from eviction (while it generates); ``unpin`` undoes one pin."""
        with self._cond:
            self._pin(cache)

    def _pin(self, cache: SlotCache) -> None:
        if cache.slot is None:
            raise GenerationError("this KV cache was evicted or released; start again from a prefix")
        self._pins[cache.slot].append(threading.get_ident())
        self._last_used[cache.slot] = time.monotonic()

    def unpin(self, cache: SlotCache) -> None:
        with self._cond:
            slot = cache.slot
            if slot is None or not self._pins[slot]:
                return
            pins = self._pins[slot]
            me = threading.get_ident()
            if me in pins:
                pins.remove(me)
            else:
                pins.pop()  # a generation may be finished by another thread than the one that began it
            self._last_used[slot] = time.monotonic()
            if not pins and cache.release_pending:
                self._free(cache)
            self._cond.notify_all()

    def release(self, cache: SlotCache) -> None:
        """Give the slot back now, or at the last unpin if a pass or generation still runs in it."""
        with self._cond:
            if cache.slot is not None and self._pins[cache.slot]:
                cache.release_pending = True
                return
            self._free(cache)

    def touch(self, cache: SlotCache) -> None:
        with self._cond:
            if cache.slot is not None:
                self._last_used[cache.slot] = time.monotonic()

    def lengths(self, lo: int, hi: int) -> np.ndarray:
        """Token counts of slots ``lo..hi`` (0 for free ones): where idle rows of a batch write."""
        with self._cond:
            out = np.zeros(hi - lo + 1, dtype=np.int64)
            for i, slot in enumerate(range(lo, hi + 1)):
                cache = self._owner(slot)
                if cache is not None:
                    out[i] = len(cache.token_ids)
            return out

    def rows(self, lo: int, hi: int) -> list[np.ndarray]:
        """Views of slots ``lo..hi`` of every layer tensor (contiguous: they can be bound as a batch)."""
        return [a[lo : hi + 1] for a in self.arrays]

    def usage(self) -> tuple[int, int, int]:
        """(free, owned, pinned) slot counts."""
        with self._cond:
            owned = [s for s in range(self.slots) if self._owner(s) is not None]
            return self.slots - len(owned), len(owned), sum(1 for s in owned if self._pins[s])

    def invariant_violations(self) -> list[str]:
        """What is wrong with the bookkeeping (empty when it is sound): every live owner sits in
        the slot it names, no slot has two owners, pins only on owned slots."""
        problems: list[str] = []
        with self._cond:
            seen: dict[int, int] = {}
            for slot in range(self.slots):
                cache = self._owner(slot)
                if cache is None:
                    if self._pins[slot] and self._owners[slot] is None:
                        problems.append(f"slot {slot} is free but pinned {len(self._pins[slot])} times")
                    continue
                if cache.slot != slot:
                    problems.append(f"slot {slot}'s owner says it holds slot {cache.slot}")
                if id(cache) in seen:
                    problems.append(f"one cache owns slots {seen[id(cache)]} and {slot}")
                seen[id(cache)] = slot
                if len(cache.token_ids) > self.max_tokens:
                    problems.append(f"slot {slot} holds {len(cache.token_ids)} > {self.max_tokens} tokens")
        return problems

    # ------------------------------------------------------------------ copies

    def seed(self, frozen: FrozenCache, pin: bool = False, wait: SlotWait | None = None) -> SlotCache:
        """A new slot holding ``frozen``'s tokens (pinned for the caller with ``pin``)."""
        cache = self.acquire(pin=True, wait=wait)  # pinned while written: never evicted mid-copy
        n = len(frozen.token_ids)
        slot = cache.slot
        assert slot is not None

        def copy() -> None:
            for dst, src in zip(self.arrays, frozen.arrays, strict=True):
                dst[slot, :, :n] = src[0]
            # set inside the exclusive section: a batched pass writes idle rows at their length
            cache.token_ids = list(frozen.token_ids)
            cache.last_logits = frozen.last_logits

        try:
            self._exclusive(copy)
        except BaseException:
            self.release(cache)
            self.unpin(cache)
            raise
        if not pin:
            self.unpin(cache)
        return cache

    def copy(self, source: SlotCache, pin: bool = False, wait: SlotWait | None = None) -> SlotCache:
        """A new slot holding ``source``'s tokens. Goes through a frozen copy, so the caller never
        holds the source pinned while it waits for a second slot (which could wait on itself)."""
        return self.seed(self.freeze(source), pin=pin, wait=wait)

    def freeze(self, source: SlotCache) -> FrozenCache:
        if source.slot is None:
            raise GenerationError("cannot freeze an evicted or released KV cache")
        self.pin(source)  # the source may not be evicted or reused while it is read
        try:
            slot, ids, logits = source.slot, list(source.token_ids), source.last_logits
            assert slot is not None
            n = len(ids)
            arrays = self._exclusive(lambda: [a[slot : slot + 1, :, :n].copy() for a in self.arrays])
        finally:
            self.unpin(source)
        frozen = FrozenCache(self, arrays, ids)  # type: ignore[arg-type]
        frozen.last_logits = logits
        return frozen
