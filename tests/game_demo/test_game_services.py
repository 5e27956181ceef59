"""The demo game's background services without pygame: reward stats over play logs, picking the
start-up bundle, watching the bundle store for hot swaps, and warming NPC persona prefixes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from game_demo.rules.stats import StatsWorker, compute_stats
from game_demo.services.bundles import choose_bundle, first_start_message, store_bundle_id
from game_demo.services.swap import ModelSwapper
from game_demo.services.warmup import Prewarmer
from npcrl.loop.promotion import CURRENT, promote
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter
from npcrl.reward.spec import default_reward_spec


def wait_for(condition: Any, timeout: float = 120.0) -> bool:  # a hang guard, far above the work
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# ---------------------------------------------------------------------- reward stats


def conversation(cid: str, npc: str, bundle: str, events: list[tuple[str, float | None]], fallback: bool = False):
    yield ConversationStart(cid, npc, "p", npc.title(), "h" * 64, bundle, {}, 1.0)
    yield NpcTurn(
        cid, 0, npc, bundle, "hi", [1], [2], [-0.1], [-0.2], "Aye.", "eos", {}, 0.1, 0.05, False, fallback, 2.0
    )
    for kind, value in events:
        yield EngagementEvent(cid, 0, kind, value, 3.0)
    yield ConversationEnd(cid, "walked_away", 4.0)


def sample_records() -> list[Any]:
    return [
        *conversation("c1", "blacksmith", "aaaa1111", [("rating", 1.0)]),  # 0.5 * 1
        *conversation("c2", "guard", "bbbb2222", [("walk_away", 1.0)]),  # -0.5
        *conversation("c3", "guard", "bbbb2222", [("rating", 1.0)], fallback=True),  # untrainable
        *conversation("c4", "guard", "bbbb2222", [("quest_accepted", 1.0)]),  # 1.0
    ]


def test_compute_stats_means_overall_recent_and_grouped():
    stats = compute_stats(sample_records(), default_reward_spec(), recent=2)
    assert (stats.turns, stats.trainable_turns, stats.conversations) == (4, 3, 4)
    assert stats.mean_reward == pytest.approx((0.5 - 0.5 + 1.0) / 3)
    assert stats.recent_turns == 2 and stats.recent_mean == pytest.approx((-0.5 + 1.0) / 2)
    assert stats.per_npc == pytest.approx({"blacksmith": 0.5, "guard": 0.25})
    assert stats.per_bundle == pytest.approx({"aaaa1111": 0.5, "bbbb2222": 0.25})


def test_compute_stats_of_no_play():
    stats = compute_stats([], default_reward_spec())
    assert (stats.turns, stats.mean_reward, stats.recent_mean, stats.per_npc) == (0, None, None, {})


def test_stats_worker_reads_the_log_directory_in_the_background(tmp_path):
    writer = PlayLogWriter(tmp_path / "logs")
    writer.append_many(sample_records())
    flushed = threading.Event()

    def flush() -> None:
        writer.flush()
        flushed.set()

    worker = StatsWorker(tmp_path / "logs", flush=flush)
    assert worker.result is None
    assert worker.request()
    assert worker.wait(timeout=300)
    assert flushed.is_set()  # queued records reach the disk before they are read
    assert worker.error is None and worker.result is not None and worker.result.turns == 4
    writer.close()


def test_stats_worker_reports_an_unreadable_log_dir(tmp_path):
    worker = StatsWorker(tmp_path / "missing")
    worker.request()
    worker.wait(timeout=300)
    assert worker.result is None and worker.error is not None and "does not exist" in worker.error


# ---------------------------------------------------------------------- start-up bundle


def test_choose_bundle_prefers_explicit_then_store_then_default(tmp_path, tiny_bundles):
    store, default = tmp_path / "store", tmp_path / "default"
    assert choose_bundle(None, store, default) is None
    explicit = tmp_path / "mine"
    assert choose_bundle(explicit, store, default).source == "--bundle"
    default_bundle = tiny_bundles["gpt2-fp32"]
    assert choose_bundle(None, store, default_bundle).path == default_bundle
    promoted = promote(store, tiny_bundles["llama-fp32"])
    choice = choose_bundle(None, store, default_bundle)
    assert (choice.path, choice.source) == (promoted.bundle_dir, "store")
    assert store_bundle_id(store) == promoted.bundle_id


def test_a_broken_store_pointer_falls_back_to_the_default(tmp_path, tiny_bundles):
    store = tmp_path / "store"
    store.mkdir()
    (store / CURRENT).write_text("{not json")
    default = tiny_bundles["gpt2-fp32"]
    assert choose_bundle(None, store, default).source == "default"
    assert store_bundle_id(store) is None


def test_first_start_message_names_the_command():
    lines = first_start_message(Path("/cache/bundles/x-q8"))
    assert any(line.strip() == "npcrl quickstart" for line in lines)
    assert any("npcrl export default --out /cache/bundles/x-q8" in line for line in lines)


# ---------------------------------------------------------------------- store watcher


def test_swapper_loads_a_new_promotion_once_and_only_while_idle(tmp_path, tiny_bundles):
    store = tmp_path / "store"
    first = promote(store, tiny_bundles["llama-fp32"])
    loads: list[Path] = []

    def loader(path: Path) -> str:
        loads.append(path)
        return f"model@{path.name}"

    swapper = ModelSwapper(store, loader, known_id=first.bundle_id, poll_interval_s=0.01)
    try:
        second = promote(store, tiny_bundles["llama-q8"])
        time.sleep(0.2)
        assert loads == [] and swapper.take_ready() is None  # not idle yet: no polling, no loading
        swapper.set_idle(True)
        assert wait_for(lambda: swapper.status.endswith("ready"))
        assert swapper.take_ready() == (second.bundle_id, f"model@{Path(second.bundle_dir).name}")
        assert swapper.take_ready() is None and swapper.status == ""
        time.sleep(0.1)
        assert len(loads) == 1  # the same promotion is not loaded again
    finally:
        swapper.close()


def test_swapper_survives_a_bundle_that_fails_to_load(tmp_path, tiny_bundles):
    store = tmp_path / "store"
    promote(store, tiny_bundles["llama-fp32"])
    calls: list[Path] = []

    def failing(path: Path) -> str:
        calls.append(path)
        raise RuntimeError("no such graph")

    swapper = ModelSwapper(store, failing, known_id=None, poll_interval_s=0.01)
    try:
        swapper.set_idle(True)
        assert wait_for(lambda: "failed" in swapper.status)
        time.sleep(0.1)
        assert len(calls) == 1 and swapper.take_ready() is None  # not retried every poll
    finally:
        swapper.close()


# ---------------------------------------------------------------------- persona prefix warm-up


class SlowAgent:
    """Stands in for an NpcAgent: ``warm_up()`` hands back work for the model it holds at the call."""

    def __init__(self, log: list[tuple[str, Any]], name: str, model: str, delay: float = 0.0) -> None:
        self.log, self.name, self.model, self.delay = log, name, model, delay

    def warm_up(self) -> WarmUpWork:
        return WarmUpWork(self, self.model)


@dataclass
class WarmUpWork:
    agent: SlowAgent
    model: str

    def result(self, timeout: float | None = None) -> None:
        time.sleep(self.agent.delay)
        self.agent.log.append((self.agent.name, self.model))
        if self.agent.name == "broken":
            raise RuntimeError("prefill failed")


def test_prewarmer_prepares_every_agent_and_reports_progress():
    log: list[tuple[str, Any]] = []
    warmer = Prewarmer()
    try:
        agents = [SlowAgent(log, "a", "M1", 0.05), SlowAgent(log, "broken", "M1"), SlowAgent(log, "c", "M1")]
        warmer.start(agents)
        assert warmer.busy and warmer.status.startswith("preparing NPC voices")
        assert wait_for(lambda: not warmer.busy)
        assert log == [("a", "M1"), ("broken", "M1"), ("c", "M1")]  # one failure does not stop the rest
        assert warmer.status == ""
    finally:
        warmer.close()


def test_prewarmer_switches_to_the_newest_model():
    log: list[tuple[str, Any]] = []
    warmer = Prewarmer()
    try:
        agents = [SlowAgent(log, name, "old", 0.2) for name in "abc"]
        warmer.start(agents)
        assert wait_for(lambda: log)  # the first agent is being warmed for "old"
        for agent in agents:
            agent.model = "new"  # what swap_model does before the game asks for a new warm-up
        warmer.start(agents)
        assert wait_for(lambda: not warmer.busy)
        assert [entry for entry in log if entry[1] == "new"] == [("a", "new"), ("b", "new"), ("c", "new")]
        assert len([entry for entry in log if entry[1] == "old"]) < 3  # "old" was abandoned part-way
    finally:
        warmer.close()
