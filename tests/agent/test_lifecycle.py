"""A conversation's and an agent's life around the game: conversations as context managers that
always give their KV slot back, warm-up the game can poll or await, and a play log closed while a
turn is still finishing."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from npcrl.agent.config import AgentConfig
from npcrl.agent.npc_agent import NpcAgent
from npcrl.agent.persona import builtin_personas
from npcrl.playlog import ConversationEnd, NpcTurn, PlayLogWriter, read_log_dir
from npcrl.runtime.model import OnnxCausalLM, SessionOptions
from npcrl.runtime.sampler import SamplerConfig

HANG_GUARD_S = 300.0


@pytest.fixture(scope="module")
def model(tiny_bundles) -> OnnxCausalLM:
    return OnnxCausalLM(tiny_bundles["llama-fp32"], SessionOptions(kv_slots=2, verify_hashes=False))


def make_agent(model: OnnxCausalLM, writer: PlayLogWriter | None = None, max_new_tokens: int = 8) -> NpcAgent:
    config = AgentConfig(
        sampler=SamplerConfig(temperature=1.0, seed=5, max_new_tokens=max_new_tokens), prompt_token_budget=200
    )
    persona = builtin_personas()["blacksmith"]
    return NpcAgent(model, persona, log_writer=writer, config=config, system_prompt="You are Brom. Be brief.")


def owned_slots(model: OnnxCausalLM) -> int:
    """Slots owned once every worker has finished and every dropped cache is collected (hang guard only)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while model.pool.queue and time.monotonic() < deadline or model.scheduler.active_sequences:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    gc.collect()
    return model.pool.usage()[1]


def ends(directory) -> list[str]:
    return [r.reason for r in read_log_dir(directory) if isinstance(r, ConversationEnd)]


def test_leaving_the_with_block_ends_the_conversation_and_frees_its_slot(model, tmp_path):
    writer = PlayLogWriter(tmp_path)
    agent = make_agent(model, writer)
    with agent.conversation("p1") as talk:
        talk.respond("Hello there!")
        assert talk.wait_idle(HANG_GUARD_S)
        assert owned_slots(model) == 1  # the conversation's memory
    assert talk.ended and owned_slots(model) == 0
    writer.close()
    assert ends(tmp_path) == ["ended"]


def test_an_exception_in_the_with_block_still_frees_the_slot(model, tmp_path):
    writer = PlayLogWriter(tmp_path)
    agent = make_agent(model, writer)
    with pytest.raises(KeyError), agent.conversation("p1") as talk:
        talk.respond("Hello there!")
        talk.wait_idle(HANG_GUARD_S)
        raise KeyError("the game failed")
    assert talk.ended and owned_slots(model) == 0
    writer.close()
    assert ends(tmp_path) == ["error"]


def test_leaving_while_a_line_generates_cancels_it_and_frees_the_slot(model, escaped):
    agent = make_agent(model, max_new_tokens=60)
    with agent.conversation("p1") as talk:
        pending = talk.respond_async("Tell me a long story about the mill.")
    line = pending.result(HANG_GUARD_S)
    assert talk.wait_idle(HANG_GUARD_S)
    assert line.text and owned_slots(model) == 0 and not escaped


def test_warm_up_runs_in_the_background_and_can_be_polled(model):
    agent = make_agent(model)
    agent.system_prompt = "You are Brom, warmed up by polling."  # a prefix no other test computed
    misses = model.prefixes.misses
    ready = agent.warm_up()
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready.done:  # what a loading screen does each frame
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ready.wait(0) and ready.result() is None and ready.exception() is None
    assert model.prefixes.misses == misses + 1
    hits = model.prefixes.hits
    agent.prefix_cache(model)
    assert model.prefixes.hits == hits + 1  # the first turn finds it ready
    assert owned_slots(model) == 0  # the warm-up's decode step gave its slot back


def test_warm_up_can_be_awaited(model):
    agent = make_agent(model)
    agent.system_prompt = "You are Brom, warmed up by asyncio."

    async def load() -> str:
        await agent.warm_up()
        return "loaded"

    assert asyncio.run(load()) == "loaded"
    assert model.prefixes.hits + model.prefixes.misses > 0


def test_a_warm_up_failure_is_reported_not_lost(model, escaped):
    agent = make_agent(model)

    def broken(_model):
        raise RuntimeError("prefix exploded")

    agent.prefix_cache = broken
    ready = agent.warm_up()
    assert ready.wait(HANG_GUARD_S)
    assert isinstance(ready.exception(), RuntimeError)
    with pytest.raises(RuntimeError, match="prefix exploded"):
        ready.result()

    async def load() -> None:
        await agent.warm_up()

    with pytest.raises(RuntimeError, match="prefix exploded"):
        asyncio.run(load())
    assert not escaped


def test_closing_the_log_while_a_turn_finishes_keeps_the_turn(model, tmp_path, monkeypatch, escaped):
    writer = PlayLogWriter(tmp_path)
    agent = make_agent(model, writer, max_new_tokens=6)
    talk = agent.start_conversation("p1")
    generating, gate = threading.Event(), threading.Event()
    real_forward = model.forward

    def slow_forward(ids, cache, all_logits=False):
        generating.set()
        gate.wait(HANG_GUARD_S)  # held until the game has asked the writer to close
        return real_forward(ids, cache, all_logits)

    monkeypatch.setattr(model, "forward", slow_forward)
    pending = talk.respond_async("Hello there!")
    assert generating.wait(HANG_GUARD_S)
    closer = threading.Thread(target=writer.close)
    closer.start()  # the game shuts down its log while the NPC is still answering
    closer.join(0.5)
    gate.set()
    line = pending.result(HANG_GUARD_S)
    closer.join(HANG_GUARD_S)
    assert not closer.is_alive() and writer.closed
    talk.wait_idle(HANG_GUARD_S)
    turns = [r for r in read_log_dir(tmp_path) if isinstance(r, NpcTurn)]
    assert [(t.turn_index, t.text) for t in turns] == [(0, line.text)]
    assert writer.stats.dropped == 0 and not escaped
