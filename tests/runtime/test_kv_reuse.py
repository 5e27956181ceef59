"""In-place KV slots, prefix reuse, batched decode across sequences, LRU bounds (tiny fused Llama)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from npcrl.agent.npc_agent import AgentConfig, NpcAgent
from npcrl.agent.persona import builtin_personas
from npcrl.errors import GenerationError
from npcrl.runtime.kvcache import FrozenCache, SlotCache
from npcrl.runtime.model import OnnxCausalLM, SessionOptions, slot_runs
from npcrl.runtime.prefixstore import PrefixStore
from npcrl.runtime.sampler import SamplerConfig
from npcrl.runtime.scheduler import Job

SHORT_SYSTEM = "You are Brom, the village blacksmith. Answer in one short sentence."


@pytest.fixture(scope="module")
def model(tiny_bundles) -> OnnxCausalLM:
    return OnnxCausalLM(tiny_bundles["llama-fp32"], SessionOptions(gather_ms=50))


@pytest.fixture(scope="module")
def ids(model) -> list[int]:
    rng = np.random.default_rng(0)
    return rng.integers(5, model.vocab_size, size=60).tolist()


def fresh_logits(model: OnnxCausalLM, ids: list[int]) -> np.ndarray:
    return model.forward(ids, model.new_cache(), all_logits=True)


def test_fused_bundles_use_in_place_slots(model):
    assert model.in_place_kv and model.pool is not None
    cache = model.new_cache()
    assert isinstance(cache, SlotCache)
    pool = model.pool
    bytes_per_token = model.kv_layout.bytes_per_token()
    # the bound on memory: slots x capacity x bytes per token, allocated once
    assert sum(a.nbytes for a in pool.arrays) == pool.slots * pool.capacity * bytes_per_token


def test_step_by_step_in_place_equals_one_pass(model, ids):
    reference = fresh_logits(model, ids)
    cache = model.new_cache()
    steps = [model.forward(ids[:20], cache)]
    steps += [model.forward([t], cache) for t in ids[20:]]
    np.testing.assert_allclose(np.stack(steps), reference[19:], atol=1e-4)
    assert cache.token_ids == ids


def test_rewind_and_continue_equals_a_fresh_prefill(model, ids):
    cache = model.new_cache()
    model.forward(ids[:50], cache)
    cache.truncate(30)  # rewind: positions 30.. are overwritten by what comes next
    other = [7, 8, 9, 10]
    got = model.forward(other, cache, all_logits=True)
    np.testing.assert_allclose(got, fresh_logits(model, ids[:30] + other)[30:], atol=1e-4)


def test_fork_and_frozen_prefix_are_independent_copies(model, ids):
    base = model.prefill(ids[:30])
    frozen = base.freeze()
    assert isinstance(frozen, FrozenCache) and frozen.token_ids == ids[:30]
    a, b = base.fork(), frozen.fork()
    la = model.forward(ids[30:40], a, all_logits=True)
    model.forward([11, 12, 13], base)  # writing into the original must not disturb the forks
    lb = model.forward(ids[30:40], b, all_logits=True)
    expected = fresh_logits(model, ids[:40])[30:]
    np.testing.assert_allclose(la, expected, atol=1e-4)
    np.testing.assert_allclose(lb, expected, atol=1e-4)
    with pytest.raises(GenerationError, match="read-only"):
        model.forward([1], frozen)


def test_generation_continues_a_conversation_cache_in_place(model, ids):
    config = SamplerConfig(temperature=1.0, seed=4, max_new_tokens=8)
    prompt = ids[:40]
    history = model.prefill(ids[:35] + [99, 98])  # shares 35 tokens with the prompt
    generation = model.generate(prompt, config, cache=history)
    result = generation.run()
    assert generation.cache is history and result.reused_tokens == 35
    fresh = model.generate_text(prompt, config)
    assert result.token_ids == fresh.token_ids
    np.testing.assert_allclose(result.logprobs, fresh.logprobs, atol=1e-4)
    np.testing.assert_allclose(result.full_logprobs, fresh.full_logprobs, atol=1e-4)


def test_batched_decode_equals_each_sequence_alone(model, ids):
    lengths = [5, 41, 17]
    caches = [model.prefill(ids[:n]) for n in lengths]
    slots = [c.slot for c in caches]
    alone = [fresh_logits(model, ids[: n + 1])[-1] for n in lengths]
    jobs = [Job(lambda: None, batch_key=model.pool, payload=(c, ids[n])) for c, n in zip(caches, lengths, strict=True)]
    batched = model._run_decode_batch(jobs)
    assert [c.slot for c in caches] == slots
    for got, want, cache, n in zip(batched, alone, caches, lengths, strict=True):
        np.testing.assert_allclose(got[0], want, atol=1e-4)
        assert cache.token_ids == ids[: n + 1]


def test_concurrent_generations_are_batched_and_unchanged(model, ids):
    """Three NPCs generating at once share passes; each gets exactly what it gets alone."""
    configs = [SamplerConfig(temperature=1.0, seed=s, max_new_tokens=12) for s in (1, 2, 3)]
    prompts = [ids[:10], ids[5:30], ids[20:60]]
    before = model.scheduler.batched_rows
    results: list = [None] * 3
    barrier = threading.Barrier(3)

    def run(i: int) -> None:
        generation = model.generate(prompts[i], configs[i], ignore_eos=True)
        barrier.wait()
        results[i] = generation.run()

    # ignore_eos keeps all three stepping together for the whole length
    alone = [model.generate(p, c, ignore_eos=True).run() for p, c in zip(prompts, configs, strict=True)]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert model.scheduler.batched_rows > before, "no decode step was batched"
    for got, want in zip(results, alone, strict=True):
        assert got.token_ids == want.token_ids
        # behaviour log-probs stay exact for the sampled tokens in a batched pass
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
        np.testing.assert_allclose(got.full_logprobs, want.full_logprobs, atol=1e-4)


def test_lru_eviction_bounds_the_slots(tiny_bundles, ids):
    model = OnnxCausalLM(tiny_bundles["llama-fp32"], SessionOptions(kv_slots=2, verify_hashes=False))
    a = model.prefill(ids[:10])
    b = model.prefill(ids[:12])
    model.forward([3], a)  # a is now the most recently used
    c = model.prefill(ids[:14])  # no free slot: b, the least recently used, is evicted
    assert not b.alive and a.alive and c.alive and model.pool.evictions == 1
    with pytest.raises(GenerationError, match="evicted"):
        model.forward([3], b)
    # a generating (pinned) slot is never evicted
    model.pool.pin(a)
    model.pool.pin(c)
    with pytest.raises(GenerationError, match="KV slots"):
        model.new_cache()
    model.pool.unpin(a)
    d = model.new_cache()
    assert not a.alive and d.alive and c.alive
    # a dropped cache frees its slot without eviction
    del d
    e = model.new_cache()
    assert c.alive and e.alive and model.pool.evictions == 2


def test_prefix_store_is_lru_within_its_byte_budget(model, ids):
    per_token = model.kv_layout.bytes_per_token()
    store = PrefixStore(max_bytes=25 * per_token, bytes_per_token=per_token)
    made: list[int] = []

    def compute(n: int):
        made.append(n)
        return model.prefill(ids[:n]).freeze()

    first = store.get(ids[:10], lambda: compute(10))
    assert store.get(ids[:10], lambda: compute(10)) is first and made == [10]
    store.get(ids[:12], lambda: compute(12))  # 22 tokens: fits
    store.get(ids[:10], lambda: compute(10))  # touch 10: now 12 is the oldest
    store.get(ids[:8], lambda: compute(8))  # 30 > 25 tokens: 12 goes
    assert made == [10, 12, 8] and store.evictions == 1 and len(store) == 2
    store.get(ids[:10], lambda: compute(10))
    assert made == [10, 12, 8]
    assert store.bytes_in_use() <= store.max_bytes


def test_typing_prefills_the_prompt_and_changes_nothing_else(model):
    config = AgentConfig(sampler=SamplerConfig(temperature=1.0, seed=5, max_new_tokens=10), prompt_token_budget=200)
    persona = builtin_personas()["blacksmith"]
    line = "Could you mend my old sword before the fair"

    def conversation(typing: bool, typed: str):
        agent = NpcAgent(model, persona, config=config, system_prompt=SHORT_SYSTEM)
        talk = agent.start_conversation()
        talk.respond("Hello there!")
        talk.wait_idle(30)
        if typing:
            for end in range(1, len(typed) + 1):
                talk.player_typing(typed[:end])  # never blocks; only the latest draft is prefilled
            talk.wait_idle(30)
        return talk.respond(line).generation

    plain = conversation(False, line)
    typed = conversation(True, line)
    assert typed.prompt_ids == plain.prompt_ids
    # the whole prompt was ready when the player pressed enter: no pass before the first token
    assert typed.reused_tokens == len(typed.prompt_ids) > plain.reused_tokens
    # a draft that differs at the end (a typo fixed by retyping) is rewound, not reused blindly
    edited = conversation(True, line[:-4] + "fare")
    assert plain.reused_tokens < edited.reused_tokens < len(edited.prompt_ids)
    for result in (typed, edited):
        assert result.token_ids == plain.token_ids
        np.testing.assert_allclose(result.logprobs, plain.logprobs, atol=1e-4)
        np.testing.assert_allclose(result.full_logprobs, plain.full_logprobs, atol=1e-4)


@pytest.mark.parametrize("quant", ["fp32", "q8", "q4"])
def test_chunked_prefill_gives_the_logits_of_one_pass(tiny_bundles, quant):
    """Beside generating sequences a prompt is prefilled in chunks; its last logits must not depend
    on that (quantised graphs use another kernel for a single row, so no chunk may be one token)."""
    model = OnnxCausalLM(tiny_bundles[f"llama-{quant}"], SessionOptions(prefill_chunk=8))
    prompt = np.random.default_rng(1).integers(5, model.vocab_size, size=33).tolist()  # 4 chunks of 8 + 1
    alone = model.forward(prompt, model.new_cache())
    sizes: list[int] = []
    run_slot = model._run_slot

    def spy(chunk, cache, want_all):
        sizes.append(len(chunk))
        return run_slot(chunk, cache, want_all)

    model._run_slot = spy
    model.scheduler.begin_sequence()  # two others generating: the prompt is chunked
    model.scheduler.begin_sequence()
    try:
        chunked = model.forward(prompt, model.new_cache())
    finally:
        model.scheduler.end_sequence()
        model.scheduler.end_sequence()
    assert sizes == [8, 8, 8, 9]  # the tiny graphs do not show the one-row kernel gap; the real q8 does
    np.testing.assert_allclose(chunked, alone, atol=1e-4)


def test_slot_runs_split_only_at_gaps_of_the_set_size() -> None:
    assert slot_runs([0, 1, 2, 5, 6], 0) == [(0, 6)]  # 0: always one pass
    assert slot_runs([0, 1, 2, 5, 6], 2) == [(0, 2), (5, 6)]
    assert slot_runs([0, 1, 2, 5, 6], 3) == [(0, 6)]  # two idle rows are not three
    assert slot_runs([0, 2, 3], 2) == [(0, 3)]
    assert slot_runs([4], 2) == [(4, 4)]


def test_a_batched_step_split_at_idle_rows_equals_each_sequence_alone(tiny_bundles, ids):
    """With ``batch_split_gap`` the rows between far-apart stepping slots are not run; every
    stepping sequence still gets exactly its own logits, and the idle ones are left as they were."""
    model = OnnxCausalLM(tiny_bundles["llama-fp32"], SessionOptions(batch_split_gap=2, kv_slots=6))
    lengths = [5, 41, 9, 12, 17]
    caches = [model.prefill(ids[:n]) for n in lengths]
    assert [c.slot for c in caches] == [0, 1, 2, 3, 4]
    stepping = [0, 1, 4]  # slots 2 and 3 idle: a gap of two
    passes: list[tuple[int, int]] = []
    step_rows = model._step_rows
    model._step_rows = lambda lo, hi, tokens: passes.append((lo, hi)) or step_rows(lo, hi, tokens)  # type: ignore[method-assign]
    jobs = [Job(lambda: None, batch_key=model.pool, payload=(caches[i], ids[lengths[i]])) for i in stepping]
    batched = model._run_decode_batch(jobs)
    assert passes == [(0, 1), (4, 4)]
    for got, i in zip(batched, stepping, strict=True):
        np.testing.assert_allclose(got[0], fresh_logits(model, ids[: lengths[i] + 1])[-1], atol=1e-4)
        assert caches[i].token_ids == ids[: lengths[i] + 1]
    for i in (2, 3):  # not stepped, not run: each goes on as if nothing had happened
        assert caches[i].token_ids == ids[: lengths[i]]
        got = model.forward([ids[lengths[i]]], caches[i])
        np.testing.assert_allclose(got, fresh_logits(model, ids[: lengths[i] + 1])[-1], atol=1e-4)
