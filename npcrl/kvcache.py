"""Where the runtime keeps key/value caches.

Fused graphs (GroupQueryAttention) write each step's keys and values *in place* into a buffer
that is bound as both ``past_*`` input and ``present.*`` output, so nothing is copied per token.
``KVPool`` preallocates those buffers as the rows of one array per layer tensor, shaped
``(slots, kv_heads, capacity, head_dim)``: a ``SlotCache`` owns one row, and concurrent one-token
decode steps of several sequences can run as a single batched pass over adjacent rows.
The arrays are zero-filled lazily by the OS, so a slot costs memory only for the positions it
has used (about 46 KB per token for SmolLM2); a pool's worst case is
``slots × capacity × bytes_per_token``. When every slot is taken, the least recently used slot
that is not generating is evicted: its cache reports ``alive == False`` and its owner starts
again from a prefix.

``FrozenCache`` is a compact read-only copy (a persona's system turn) that seeds slots, and
``PrefixStore`` keeps those per token sequence, evicting by LRU within a byte budget.

Traced graphs return new ``present`` tensors each step (``ConcatCache``); they are not batched.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from npcrl.bundle import KVLayout
from npcrl.errors import GenerationError


class KVCache:
    """The past keys/values of one sequence and the token ids they cover."""

    token_ids: list[int]
    last_logits: np.ndarray | None = None
    """logits after the last token, kept by ``forward``: a prompt held whole needs no pass to start"""

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def alive(self) -> bool:
        """False once evicted or released: the cache no longer holds its tokens' state."""
        return True

    def fork(self) -> KVCache:
        """An independent cache holding the same tokens."""
        raise NotImplementedError

    def truncate(self, length: int) -> None:
        """Forget every token after the first ``length`` (rewind)."""
        raise NotImplementedError

    def release(self) -> None:
        """Free the memory now instead of at garbage collection."""


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ConcatCache(KVCache):
    """Traced graphs: ``forward`` replaces ``values`` with the graph's new ``present`` tensors."""

    def __init__(self, values: list[ort.OrtValue], token_ids: list[int]) -> None:
        self.values = values
        self.token_ids = token_ids

    def fork(self) -> ConcatCache:
        # forward never writes into its inputs, so the forks may share the tensors
        fork = ConcatCache(list(self.values), list(self.token_ids))
        fork.last_logits = self.last_logits
        return fork

    def truncate(self, length: int) -> None:
        if not 0 <= length <= len(self.token_ids):
            raise ValueError(f"cannot truncate {len(self.token_ids)} tokens to {length}")
        if length == len(self.token_ids):
            return
        self.values = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :length])) for v in self.values
        ]
        del self.token_ids[length:]
        self.last_logits = None


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
    runs both through one serialising scheduler, and ``exclusive`` is the hook it provides.
    """

    def __init__(
        self,
        layout: KVLayout,
        slots: int,
        capacity: int,
        exclusive: Callable[[Callable[[], object]], object] | None = None,
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
        self._lock = threading.RLock()
        self._owners: list[weakref.ref[SlotCache] | None] = [None] * slots
        self._pinned = [0] * slots
        self._last_used = [0.0] * slots
        self.evictions = 0

    @property
    def max_tokens(self) -> int:
        """Most tokens one sequence may hold: one position stays free for a batched pass's idle rows."""
        return self.capacity - 1

    def bytes_in_use(self) -> int:
        with self._lock:
            caches = [ref() for ref in self._owners if ref is not None]
        return sum(len(c) for c in caches if c is not None) * self.layout.bytes_per_token()

    # ------------------------------------------------------------------ slots

    def acquire(self) -> SlotCache:
        """An empty cache in a free slot, evicting the least recently used idle slot if none is free."""
        with self._lock:
            slot = self._free_slot()
            cache = SlotCache(self, slot)
            self._owners[slot] = weakref.ref(cache)
            self._last_used[slot] = time.monotonic()
            return cache

    def _free_slot(self) -> int:
        for slot, ref in enumerate(self._owners):
            if ref is None or ref() is None:  # never used, released, or its cache was collected
                self._pinned[slot] = 0
                return slot
        idle = [s for s in range(self.slots) if self._pinned[s] == 0]
        if not idle:
            raise GenerationError(f"all {self.slots} KV slots are generating at once; raise SessionOptions.kv_slots")
        victim = min(idle, key=lambda s: self._last_used[s])
        ref = self._owners[victim]
        evicted = ref() if ref is not None else None
        if evicted is not None:
            evicted.slot = None
            evicted.token_ids = []
        self.evictions += 1
        return victim

    def release(self, cache: SlotCache) -> None:
        with self._lock:
            slot = cache.slot
            if slot is None:
                return
            ref = self._owners[slot]
            if ref is not None and ref() is cache:
                self._owners[slot] = None
                self._pinned[slot] = 0
            cache.slot = None
            cache.token_ids = []

    def pin(self, cache: SlotCache) -> None:
        """Keep ``cache`` from eviction (while it generates); ``unpin`` undoes one pin."""
        with self._lock:
            if cache.slot is None:
                raise GenerationError("this KV cache was evicted or released; start again from a prefix")
            self._pinned[cache.slot] += 1
            self._last_used[cache.slot] = time.monotonic()

    def unpin(self, cache: SlotCache) -> None:
        with self._lock:
            if cache.slot is not None and self._pinned[cache.slot] > 0:
                self._pinned[cache.slot] -= 1
                self._last_used[cache.slot] = time.monotonic()

    def touch(self, cache: SlotCache) -> None:
        with self._lock:
            if cache.slot is not None:
                self._last_used[cache.slot] = time.monotonic()

    def lengths(self, lo: int, hi: int) -> np.ndarray:
        """Token counts of slots ``lo..hi`` (0 for free ones): where idle rows of a batch write."""
        with self._lock:
            out = np.zeros(hi - lo + 1, dtype=np.int64)
            for i, slot in enumerate(range(lo, hi + 1)):
                ref = self._owners[slot]
                cache = ref() if ref is not None else None
                if cache is not None:
                    out[i] = len(cache.token_ids)
            return out

    def rows(self, lo: int, hi: int) -> list[np.ndarray]:
        """Views of slots ``lo..hi`` of every layer tensor (contiguous: they can be bound as a batch)."""
        return [a[lo : hi + 1] for a in self.arrays]

    # ------------------------------------------------------------------ copies

    def seed(self, frozen: FrozenCache) -> SlotCache:
        """A new slot holding ``frozen``'s tokens."""
        cache = self.acquire()
        n = len(frozen.token_ids)

        def copy() -> None:
            assert cache.slot is not None
            for dst, src in zip(self.arrays, frozen.arrays, strict=True):
                dst[cache.slot, :, :n] = src[0]
            # set inside the exclusive section: a batched pass writes idle rows at their length
            cache.token_ids = list(frozen.token_ids)
            cache.last_logits = frozen.last_logits

        self._exclusive(copy)
        return cache

    def copy(self, source: SlotCache) -> SlotCache:
        if source.slot is None:
            raise GenerationError("cannot fork an evicted or released KV cache")
        self.pin(source)  # acquiring a slot must not evict the source
        try:
            cache = self.acquire()
        finally:
            self.unpin(source)
        n = len(source.token_ids)

        def copy() -> None:
            assert cache.slot is not None and source.slot is not None
            for a in self.arrays:
                a[cache.slot, :, :n] = a[source.slot, :, :n]
            cache.token_ids = list(source.token_ids[:n])
            cache.last_logits = source.last_logits

        self._exclusive(copy)
        return cache

    def freeze(self, source: SlotCache) -> FrozenCache:
        if source.slot is None:
            raise GenerationError("cannot freeze an evicted or released KV cache")
        n = len(source.token_ids)

        def copy() -> list[np.ndarray]:
            assert source.slot is not None
            return [a[source.slot : source.slot + 1, :, :n].copy() for a in self.arrays]

        arrays = self._exclusive(copy)
        frozen = FrozenCache(self, arrays, list(source.token_ids))  # type: ignore[arg-type]
        frozen.last_logits = source.last_logits
        return frozen


class PrefixStore:
    """Read-only prefix caches by token sequence, evicted least recently used first beyond ``max_bytes``."""

    def __init__(self, max_bytes: int, bytes_per_token: int) -> None:
        self.max_bytes = max_bytes
        self.bytes_per_token = bytes_per_token
        self._entries: OrderedDict[tuple[int, ...], KVCache] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, ids: Sequence[int], compute: Callable[[], KVCache]) -> KVCache:
        key = tuple(ids)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            self.misses += 1
        entry = compute()  # outside the lock: a prefill takes seconds; a rare duplicate is harmless
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self.bytes_in_use() > self.max_bytes:
                self._entries.popitem(last=False)
                self.evictions += 1
        return entry

    def bytes_in_use(self) -> int:
        return sum(len(e) for e in self._entries.values()) * self.bytes_per_token

    def __len__(self) -> int:
        return len(self._entries)
