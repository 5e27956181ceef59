"""A conversation's KV memory: the cache of everything said so far, kept between turns so that the
next turn prefills only the player's new words, and brought forward off the game thread (after
each line, and while the player types). Only an optimisation: on any failure the next turn starts
from the persona prefix."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from npcrl.agent.workers import start_worker
from npcrl.runtime.kvcache import KVCache
from npcrl.runtime.model import OnnxCausalLM

log = logging.getLogger("npcrl.agent.memory")


class ConversationMemory:
    """The cache a conversation's next turn starts from. Once ``close``d, every cache handed to it
    is released at once, so an ended conversation keeps no KV slot."""

    def __init__(self, model: OnnxCausalLM, persona_prefix: Callable[[list[int]], KVCache | None], name: str) -> None:
        self._model = model
        self._persona_prefix = persona_prefix
        self._name = name
        self._cache: KVCache | None = None
        self._ready = threading.Event()  # clear while a worker brings the cache forward
        self._ready.set()
        self._lock = threading.Lock()
        self._closed = False
        self._typed = ""  # the player's latest draft
        self._typing = False  # a typing worker runs
        self.worker: threading.Thread | None = None
        """the latest worker started here (a typing prefill)"""

    def cached_ids(self) -> list[int] | None:
        """The tokens the kept cache holds (None when none is kept, or while a turn owns it)."""
        with self._lock:
            return None if self._cache is None else list(self._cache.token_ids)

    def take(self, timeout_s: float | None) -> KVCache | None:
        """The cache for a new turn, which then owns it; waits up to ``timeout_s`` for a running update."""
        self._ready.wait(timeout_s)
        with self._lock:
            cache, self._cache = self._cache, None
        return cache

    def store(self, cache: KVCache | None) -> None:
        """Keep ``cache`` for the next turn, or give its slot back if the memory is closed."""
        with self._lock:
            if not self._closed:
                self._cache, cache = cache, None
        if cache is not None:
            cache.release()

    def begin_update(self) -> None:
        """A line has finished and ``advance`` follows: a new turn waits for it."""
        self._ready.clear()

    def advance(self, cache: KVCache, stem_of: Callable[[], list[int]]) -> None:
        """After ``begin_update``: bring ``cache`` (the finished turn's) to hold ``stem_of()``, the
        tokens every next prompt starts with, so the next turn prefills only the player's words."""
        try:
            self.store(cache)  # kept as it is if the stem cannot be computed
            self._prefill(stem_of())
        finally:
            self._ready.set()

    def _prefill(self, stem: list[int]) -> None:
        """Bring the stored cache to hold ``stem`` (rewinding what differs)."""
        with self._lock:
            cache, self._cache = self._cache, None  # close() meanwhile will not free it under us
            closed = self._closed
        if closed or not stem:
            self.store(cache)
            return
        try:
            cache = self._model.extend(stem, cache, self._persona_prefix([*stem, 0]))
        except Exception:
            log.exception("could not extend the conversation cache of NPC %s", self._name)
            if cache is not None:
                cache.release()
            cache = None
        self.store(cache)

    def typed(self, text: str, prompt_for: Callable[[str], list[int]]) -> None:
        """The player's draft is ``text``: prefill ``prompt_for(text)`` in a worker; while one runs,
        only the latest draft is kept and it picks that up when it finishes."""
        with self._lock:
            self._typed = text
            if self._typing or self._closed:
                return
            self._typing = True
            self._ready.clear()
        self.worker = start_worker(lambda: self._prefill_drafts(prompt_for), f"npcrl-{self._name}-typing")

    def _prefill_drafts(self, prompt_for: Callable[[str], list[int]]) -> None:
        done: str | None = None
        try:
            while True:
                with self._lock:
                    typed = self._typed
                    if typed == done or self._closed:
                        return
                self._prefill(prompt_for(typed))
                done = typed
        except Exception:  # only an optimisation: never let it escape the worker thread
            log.exception("NPC %s: prefilling the typed text failed", self._name)
        finally:
            with self._lock:
                self._typing = False
            self._ready.set()

    def close(self) -> None:
        """Release the cache now (about 46 KB per token for SmolLM2); a worker that holds one took it
        out first and releases it itself when it sees the memory closed."""
        with self._lock:
            self._closed = True
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.release()
