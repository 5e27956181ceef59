"""Runtime generation: streaming, log-probs against a reference computation, stops, cancellation, no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from npcrl.errors import GenerationError
from npcrl.runtime.model import CancelToken, OnnxCausalLM
from npcrl.runtime.sampler import SamplerConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tiny_bundles) -> OnnxCausalLM:
    return OnnxCausalLM(tiny_bundles["llama-fp32"])


@pytest.fixture(scope="module")
def prompt(model) -> list[int]:
    return model.tokenizer.encode_chat([{"role": "user", "content": "Welcome to the Prancing Pony, traveller!"}])


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_streamed_chunks_concatenate_to_the_result(model, prompt):
    generation = model.generate(prompt, SamplerConfig(temperature=1.0, seed=3, max_new_tokens=24))
    pieces = [chunk.text for chunk in generation]
    result = generation.result
    assert result is not None
    assert "".join(pieces) == result.text
    assert result.text == model.tokenizer.decode([t for t in result.token_ids if t not in model.eos_token_ids])
    assert len(result.token_ids) == len(result.logprobs) == len(result.full_logprobs)


def test_logged_logprobs_match_a_teacher_forced_recomputation(model, prompt):
    """Both log-probs the trainer relies on, checked against the model's own logits recomputed in one pass."""
    config = SamplerConfig(temperature=0.8, top_k=20, seed=11, max_new_tokens=20)
    result = model.generate_text(prompt, config)
    sequence = prompt + result.token_ids
    logits = model.forward(sequence, model.new_cache(), all_logits=True)[len(prompt) - 1 : -1]
    scaled = logits / config.temperature
    full = _log_softmax(scaled)[np.arange(len(result.token_ids)), result.token_ids]
    np.testing.assert_allclose(result.full_logprobs, full, atol=1e-4)
    for row, token, logged in zip(scaled, result.token_ids, result.logprobs, strict=True):
        top = np.argsort(row)[::-1][: config.top_k]
        assert token in top
        expected = _log_softmax(row[top])[list(top).index(token)]
        assert logged == pytest.approx(expected, abs=1e-4)


def test_greedy_is_deterministic_and_logprob_zero(model, prompt):
    config = SamplerConfig(temperature=0.0, max_new_tokens=10)
    a, b = model.generate_text(prompt, config), model.generate_text(prompt, config)
    assert a.token_ids == b.token_ids
    assert all(lp == 0.0 for lp in a.logprobs)


def test_seed_makes_sampling_reproducible(model, prompt):
    a = model.generate_text(prompt, SamplerConfig(temperature=1.2, seed=5, max_new_tokens=16))
    b = model.generate_text(prompt, SamplerConfig(temperature=1.2, seed=5, max_new_tokens=16))
    c = model.generate_text(prompt, SamplerConfig(temperature=1.2, seed=6, max_new_tokens=16))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_max_new_tokens_is_respected(model, prompt):
    result = model.generate_text(prompt, SamplerConfig(temperature=1.0, seed=1, max_new_tokens=5))
    assert len(result.token_ids) <= 5
    if result.stop_reason == "max_new_tokens":
        assert len(result.token_ids) == 5


def test_stop_string_cuts_text_and_generation(model, prompt):
    free = model.generate_text(prompt, SamplerConfig(temperature=0.0, max_new_tokens=30))
    assert len(free.text) > 4, "the tiny model should say something"
    stop = free.text[2:4]
    cut = model.generate_text(prompt, SamplerConfig(temperature=0.0, max_new_tokens=30, stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string"
    assert cut.text == free.text[: free.text.index(stop)]
    assert stop not in cut.text
    assert len(cut.token_ids) < len(free.token_ids)


def test_eos_stops_generation_and_is_logged_but_not_shown(model, prompt, monkeypatch):
    eos = next(iter(model.eos_token_ids))
    real_forward = model.forward
    calls = {"n": 0}

    def forward_with_eos_on_third_step(ids, cache, all_logits=False):
        logits = real_forward(ids, cache, all_logits)
        calls["n"] += 1
        if calls["n"] == 3:
            logits = logits.copy()
            logits[eos] = logits.max() + 50.0
        return logits

    monkeypatch.setattr(model, "forward", forward_with_eos_on_third_step)
    result = model.generate_text(prompt, SamplerConfig(temperature=1.0, seed=0, max_new_tokens=50))
    assert result.stop_reason == "eos"
    assert len(result.token_ids) == 3 and result.token_ids[-1] == eos
    assert result.logprobs[-1] == pytest.approx(0.0, abs=1e-6)
    assert model.tokenizer.eos_token not in result.text


def test_cancel_from_another_thread_stops_before_the_next_token(model, prompt):
    token = CancelToken()
    generation = model.generate(prompt, SamplerConfig(temperature=1.0, seed=2, max_new_tokens=200), cancel=token)
    seen = 0
    for _ in generation:
        seen += 1
        if seen == 3:
            threading.Thread(target=token.cancel).start()
            threading.Event().wait(0.05)
    assert generation.result is not None
    assert generation.result.stop_reason == "cancelled"
    assert len(generation.result.token_ids) == 3


def test_empty_prompt_and_bad_ids_are_rejected(model):
    with pytest.raises(GenerationError, match="prompt is empty"):
        model.generate([])
    with pytest.raises(GenerationError, match="token id out of range"):
        model.forward([model.vocab_size + 5], model.new_cache())


def test_context_full_stops_cleanly(model):
    limit = model.max_positions
    assert limit is not None
    prompt = [5] * (limit - 2)
    result = model.generate_text(prompt, SamplerConfig(temperature=1.0, seed=0, max_new_tokens=10))
    assert result.stop_reason in ("context_full", "eos")
    assert len(prompt) + len(result.token_ids) <= limit + 1


def test_two_threads_share_one_session(model, prompt):
    config = SamplerConfig(temperature=1.0, seed=9, max_new_tokens=12)
    expected = model.generate_text(prompt, config).token_ids
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(model.generate_text(prompt, config).token_ids)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_runtime_works_without_torch(tiny_bundles):
    """Import npcrl and generate with torch made unimportable, as in a game without training extras."""
    script = textwrap.dedent(
        f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "transformers":
                    raise ImportError("torch is blocked in this test")
                return None
        sys.meta_path.insert(0, BlockTorch())
        import npcrl
        from npcrl.runtime.model import OnnxCausalLM
        from npcrl.runtime.sampler import SamplerConfig
        model = OnnxCausalLM({str(tiny_bundles["llama-q8"])!r})
        ids = model.tokenizer.encode_chat([{{"role": "user", "content": "hello"}}])
        result = model.generate_text(ids, SamplerConfig(seed=1, max_new_tokens=8))
        assert len(result.token_ids) >= 1
        assert "torch" not in sys.modules
        print("ok", len(result.token_ids))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_prefix_cache_gives_the_same_logits_and_tokens_as_a_fresh_prefill(model, prompt):
    prefix = model.prefill(prompt[:-4])
    before = list(prefix.token_ids)
    fresh = model.forward(prompt, model.new_cache(), all_logits=True)[-1]
    forked = prefix.fork()
    reused = model.forward(prompt[len(prefix) :], forked)
    np.testing.assert_allclose(reused, fresh, atol=1e-5)
    config = SamplerConfig(temperature=1.0, seed=4, max_new_tokens=12)
    plain = model.generate_text(prompt, config)
    for _ in range(2):  # the prefix is not consumed by use
        cached = model.generate(prompt, config, prefix_cache=prefix).run()
        assert cached.token_ids == plain.token_ids
        np.testing.assert_allclose(cached.logprobs, plain.logprobs, atol=1e-5)
    assert prefix.token_ids == before


def test_prefix_cache_must_be_a_proper_prefix(model, prompt):
    with pytest.raises(GenerationError, match="proper prefix"):
        model.generate(prompt, prefix_cache=model.prefill(prompt))
    with pytest.raises(GenerationError, match="proper prefix"):
        model.generate(prompt, prefix_cache=model.prefill([t + 1 for t in prompt[:3]]))
