"""Where the server's model comes from, and the background thread that loads it.

The model loads after the server has started listening (``/health`` says "loading" meanwhile).
With a bundle store, the thread then keeps polling the store's promoted bundle and loads each new
one, which the server gives to new conversations only: conversations already open keep theirs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from npcrl.errors import BundleError
from npcrl.loop.promotion import current_bundle
from npcrl.paths import default_bundle_dir
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.session import SessionOptions

log = logging.getLogger("npcrl.serve.loading")

STORE_POLL_S = 2.0
"""how often a store's promoted bundle is checked: a promotion reaches new conversations this fast"""


@dataclass(frozen=True)
class ModelSource:
    """The bundle to serve: ``store``'s promoted one when there is one, else ``bundle``, else the
    cached default bundle (``npcrl quickstart`` fetches it)."""

    bundle: Path | None = None
    store: Path | None = None
    options: SessionOptions = field(default_factory=SessionOptions)
    poll_s: float = STORE_POLL_S

    def promoted(self) -> tuple[Path, str] | None:
        """The store's promoted bundle and its id; None without a store or a promotion. A broken
        store is logged and treated as no promotion: the server keeps the model it has."""
        if self.store is None:
            return None
        try:
            promotion = current_bundle(self.store)
        except BundleError as exc:
            log.warning("bundle store %s: %s", self.store, exc)
            return None
        return None if promotion is None else (promotion.bundle_dir, promotion.bundle_id)

    def first_bundle(self) -> Path:
        promoted = self.promoted()
        if promoted is not None:
            return promoted[0]
        return self.bundle if self.bundle is not None else default_bundle_dir()


Loaded = Callable[[OnnxCausalLM], None]
Failed = Callable[[BaseException], None]


class ModelLoader:
    """Loads the first model in a thread, then (with a store) each newly promoted one.

    ``on_loaded(model)`` runs in that thread for every model (warm it up there: the server stays
    responsive); ``on_failed(error)`` runs if the first model cannot be loaded."""

    def __init__(self, source: ModelSource, on_loaded: Loaded, on_failed: Failed) -> None:
        self.source = source
        self._on_loaded = on_loaded
        self._on_failed = on_failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="npcrl-serve-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop polling (a load under way finishes first, up to ``timeout_s``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            model = OnnxCausalLM(self.source.first_bundle(), self.source.options)
            self._on_loaded(model)
        except Exception as exc:  # reported to the server, which stops: it has nothing to serve
            log.error("cannot load the model: %s: %s", type(exc).__name__, exc)
            self._on_failed(exc)
            return
        current = model.bundle_id
        while self.source.store is not None and not self._stop.wait(self.source.poll_s):
            current = self._swap_if_promoted(current)

    def _swap_if_promoted(self, current: str) -> str:
        """Load the store's promoted bundle if it is not ``current``; the id now served."""
        promoted = self.source.promoted()
        if promoted is None or promoted[1] == current:
            return current
        try:
            model = OnnxCausalLM(promoted[0], self.source.options)
            self._on_loaded(model)
        except Exception as exc:  # a bad promotion must not take the server down: keep the old model
            log.error("cannot load promoted bundle %s: %s: %s", promoted[1], type(exc).__name__, exc)
            return promoted[1]  # not retried until the store changes again
        log.info("new conversations now use bundle %s", model.bundle_id)
        return model.bundle_id
