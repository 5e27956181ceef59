"""Reward stats over the play logs, computed in a background thread for the stats overlay.

Reading a whole log directory takes from milliseconds to seconds as logs grow, so the game asks
for stats (``request``) and shows the last result; a frame never waits for the reader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from npcrl import Record, RewardSpec, default_reward_spec, read_log_dir, reward_summary, turn_rewards

log = logging.getLogger("game_demo.stats")

RECENT_TURNS = 20


@dataclass(frozen=True)
class RewardStats:
    turns: int
    trainable_turns: int
    conversations: int
    mean_reward: float | None
    recent_mean: float | None
    """mean over the last ``RECENT_TURNS`` trainable turns: what the current model is earning now"""
    recent_turns: int
    per_npc: dict[str, float | None]
    per_bundle: dict[str, float | None]


def _count(summary: dict[str, object], key: str) -> int:
    value = summary[key]
    if not isinstance(value, int):
        raise TypeError(f"reward_summary()[{key!r}] is {type(value).__name__}, expected int")
    return value


def _means(summary: dict[str, object], key: str) -> dict[str, float | None]:
    value = summary[key]
    if not isinstance(value, dict):
        raise TypeError(f"reward_summary()[{key!r}] is {type(value).__name__}, expected dict")
    return {str(name): None if mean is None else float(mean) for name, mean in value.items()}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compute_stats(records: Iterable[Record], spec: RewardSpec, recent: int = RECENT_TURNS) -> RewardStats:
    rewards = turn_rewards(records, spec)
    summary = reward_summary(rewards)
    trainable = [r.reward for r in rewards if r.trainable]
    # turn_rewards keeps log order conversation by conversation, so the tail is the latest play.
    latest = trainable[-recent:]
    return RewardStats(
        turns=_count(summary, "turns"),
        trainable_turns=_count(summary, "trainable_turns"),
        conversations=_count(summary, "conversations"),
        mean_reward=_mean(trainable),
        recent_mean=_mean(latest),
        recent_turns=len(latest),
        per_npc=_means(summary, "mean_reward_per_npc"),
        per_bundle=_means(summary, "mean_reward_per_bundle"),
    )


class StatsWorker:
    """Computes ``RewardStats`` for ``log_dir`` off the game thread, one request at a time."""

    def __init__(
        self, log_dir: Path, flush: Callable[[], object] | None = None, spec: RewardSpec | None = None
    ) -> None:
        self.log_dir = log_dir
        self._flush = flush  # the writer's queue holds the latest records until flushed to disk
        self._spec = spec or default_reward_spec()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._result: RewardStats | None = None
        self._error: str | None = None

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    @property
    def result(self) -> RewardStats | None:
        with self._lock:
            return self._result

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._error

    def request(self) -> bool:
        """Start a computation unless one is running; True if one was started."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._thread = threading.Thread(target=self._run, name="game-demo-stats", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running computation ends (tests and shutdown only, never in a frame)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self) -> None:
        try:
            if self._flush is not None:
                self._flush()
            stats = compute_stats(read_log_dir(self.log_dir), self._spec)
        except Exception as exc:  # a broken log must not take the game down; the overlay says why
            log.warning("reward stats failed: %s", exc)
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._result, self._error = stats, None
