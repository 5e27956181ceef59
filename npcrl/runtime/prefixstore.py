"""Read-only prefix caches (persona system turns) shared by every NPC on a model.

A prefix is computed once: threads that ask for one that is being computed wait for it instead
of computing it again (each computation holds a KV slot for seconds on a small CPU). Entries are
evicted least recently used first beyond a byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from npcrl.runtime.kvcache import KVCache


class PrefixStore:
    """Read-only prefix caches by token sequence, evicted least recently used first beyond ``max_bytes``."""

    def __init__(self, max_bytes: int, bytes_per_token: int) -> None:
        self.max_bytes = max_bytes
        self.bytes_per_token = bytes_per_token
        self._entries: OrderedDict[tuple[int, ...], KVCache] = OrderedDict()
        self._computing: dict[tuple[int, ...], threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, ids: Sequence[int], compute: Callable[[], KVCache]) -> KVCache:
        """The entry for ``ids``; ``compute`` runs (outside the lock) only in the first thread to ask."""
        key = tuple(ids)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry
                running = self._computing.get(key)
                if running is None:
                    running = self._computing[key] = threading.Event()
                    self.misses += 1
                    break
            running.wait()  # then look again: it is stored, or it failed and this thread computes it
        try:
            entry = compute()
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > 1 and self._bytes() > self.max_bytes:
                    self._entries.popitem(last=False)
                    self.evictions += 1
        finally:
            with self._lock:
                del self._computing[key]
            running.set()
        return entry

    def _bytes(self) -> int:
        return sum(len(e) for e in self._entries.values()) * self.bytes_per_token

    def bytes_in_use(self) -> int:
        with self._lock:
            return self._bytes()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
