"""Hot swap: watch the bundle store off the game thread and load a newly promoted bundle there.

The game thread only asks ``take_ready()`` between conversations and hands the model to each NPC
(``NpcAgent.swap_model``). Reading the store pointer and loading a bundle (hashing hundreds of MB,
building an onnxruntime session) both happen in this module's thread, never in a frame.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from npcrl import BundleError, current_bundle

log = logging.getLogger("game_demo.swap")

M = TypeVar("M")


class ModelSwapper(Generic[M]):
    """Polls ``store`` every ``poll_interval_s`` while the game says it is idle (no conversation:
    loading competes with generation for the CPU), and loads each newly promoted bundle once."""

    def __init__(
        self,
        store: Path,
        loader: Callable[[Path], M],
        *,
        known_id: str | None,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        self._loader = loader
        self._seen_id = known_id  # the promotion the game already knows about is not a swap
        self._interval = poll_interval_s
        self._lock = threading.Lock()
        self._ready: tuple[str, M] | None = None
        self._status = ""
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="game-demo-swap", daemon=True)
        self._thread.start()

    @property
    def status(self) -> str:
        """What the corner of the screen says about a swap in progress (empty when nothing happens)."""
        with self._lock:
            return self._status

    def set_idle(self, idle: bool) -> None:
        if idle:
            self._idle.set()
        else:
            self._idle.clear()

    def take_ready(self) -> tuple[str, M] | None:
        """(bundle id, model) of a loaded new bundle, once; None if there is none."""
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                self._status = ""
            return ready

    def close(self) -> None:
        self._stop.set()
        # A load in progress finishes first (onnxruntime cannot be interrupted); the thread is a
        # daemon, so a slow one never holds up the game's exit.
        self._thread.join(timeout=5)

    def _set_status(self, status: str) -> None:
        with self._lock:
            self._status = status

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._idle.is_set():
                continue
            try:
                promotion = current_bundle(self.store)
            except BundleError as exc:
                self._set_status("bundle store unreadable")
                log.warning("cannot read the bundle store: %s", exc)
                continue
            if promotion is None or promotion.bundle_id == self._seen_id:
                continue
            # Remembered before loading: a bundle that fails is not retried every poll, only when
            # another promotion replaces it.
            self._seen_id = promotion.bundle_id
            self._set_status(f"loading model {promotion.bundle_id[:8]}…")
            try:
                model = self._loader(promotion.bundle_dir)
            except Exception as exc:  # a bad promotion must not take the game down
                log.warning("promoted bundle %s failed to load: %s", promotion.bundle_id, exc)
                self._set_status(f"model {promotion.bundle_id[:8]} failed to load")
                continue
            with self._lock:
                self._ready = (promotion.bundle_id, model)
                self._status = f"model {promotion.bundle_id[:8]} ready"
