"""Behaviour log-probs in torch against the game's numpy sampler, drawn step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from npcrl.runtime.sampler import Sampler, SamplerConfig  # noqa: E402
from npcrl.train.behaviour import sampler_logprobs  # noqa: E402

# The sampler's untruncated normaliser sums float32 exp weights (see npcrl.runtime.sampler): ~1e-7.
TOL = 1e-6

CONFIGS = {
    "temperature-0.7": SamplerConfig(temperature=0.7),
    "top-p-0.9": SamplerConfig(temperature=0.7, top_p=0.9),
    "top-k-5": SamplerConfig(temperature=0.7, top_k=5),
    "top-k-8-top-p-0.8": SamplerConfig(temperature=0.7, top_k=8, top_p=0.8),
    "repetition-penalty-1.3": SamplerConfig(temperature=0.7, repetition_penalty=1.3),
    "combined": SamplerConfig(temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3),
    "temperature-1.0": SamplerConfig(temperature=1.0),
    "greedy": SamplerConfig(temperature=0.0),
    "greedy-penalty-1.3": SamplerConfig(temperature=0.0, repetition_penalty=1.3),
}
VOCAB = 1000
STEPS = 18
# Boosted in the logits of most steps and present in the prompt, so responses repeat them.
FAVOURITES = [7, 123, 256, 289]


def make_logits(seed: int, steps: int = STEPS, vocab: int = VOCAB) -> np.ndarray:
    """float32 (steps, vocab) logits: coarse values (ties everywhere), peaked steps, tied maxima."""
    rng = np.random.default_rng(seed)
    # A 0.25 grid makes many ids share a value, so top-k/top-p boundaries fall inside ties.
    logits = np.round(rng.normal(0.0, 2.0, (steps, vocab)) * 4) / 4
    for step in range(steps):
        if step % 3 == 0:  # peaked: a few favourites far ahead of the rest
            logits[step, FAVOURITES] += 10.0
        elif step % 3 == 1:  # moderately favoured, so penalised favourites change the ranking
            logits[step, FAVOURITES] += 2.5
        if step % 4 == 2:  # two ids tie for the maximum: greedy must take the lower one
            logits[step, [211, 42]] = logits[step].max() + 1.0
    return logits.astype(np.float32)


def make_prompt(seed: int, vocab: int = VOCAB) -> list[int]:
    rng = np.random.default_rng(seed + 1000)
    return [*rng.integers(0, vocab, 40).tolist(), *FAVOURITES[:3], 42]


def sample_response(logits: np.ndarray, prompt: list[int], config: SamplerConfig) -> tuple[list[int], list[float]]:
    """Draw one token per row with the game's sampler, context = prompt + tokens so far."""
    sampler = Sampler(config)
    tokens: list[int] = []
    logprobs: list[float] = []
    for row in logits:
        drawn = sampler.sample(row, np.asarray(prompt + tokens, dtype=np.int64))
        tokens.append(drawn.token_id)
        logprobs.append(drawn.logprob)
    return tokens, logprobs


def score(logits: np.ndarray, prompt: list[int], response: list[int], config: SamplerConfig) -> np.ndarray:
    out = sampler_logprobs(torch.from_numpy(logits), prompt, response, config)
    assert out.dtype == torch.float64 and out.shape == (len(response),)
    return out.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_matches_the_sampler_logprob_of_every_drawn_token(config, seed):
    config = SamplerConfig(**{**config.to_dict(), "seed": seed})
    logits = make_logits(seed)
    prompt = make_prompt(seed)
    response, expected = sample_response(logits, prompt, config)
    if config.repetition_penalty != 1.0:
        # Otherwise the penalty's growing context would go untested.
        assert set(prompt) & set(response)
        assert len(set(response)) < len(response)

    got = score(logits, prompt, response, config)

    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
@pytest.mark.parametrize(
    "config",
    [SamplerConfig(temperature=0.9, top_p=0.9, repetition_penalty=1.2), CONFIGS["combined"]],
    ids=["top-p-penalty", "combined"],
)
def test_matches_the_sampler_at_a_real_vocabulary_size(config, dtype):
    seed = 5
    rng = np.random.default_rng(seed)
    vocab = 50_257
    logits = rng.normal(0.0, 2.5, (24, vocab))
    logits[:, FAVOURITES] += 8.0
    logits = logits.astype(dtype)
    prompt = [*rng.integers(0, vocab, 200).tolist(), *FAVOURITES]
    config = SamplerConfig(**{**config.to_dict(), "seed": seed})
    response, expected = sample_response(logits, prompt, config)

    got = score(logits, prompt, response, config)

    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("top_p", [0.9, 0.97], ids=lambda p: f"top-p={p}")
def test_matches_the_sampler_when_the_nucleus_is_most_of_a_flat_vocabulary(top_p):
    # Thousands of ids to reach top_p: both sides widen their ranking past the first candidates.
    logits = np.random.default_rng(11).normal(0.0, 0.3, (12, 5000)).astype(np.float32)
    prompt = list(range(0, 5000, 7))
    config = SamplerConfig(temperature=1.0, top_p=top_p, repetition_penalty=1.5, seed=11)
    response, expected = sample_response(logits, prompt, config)

    got = score(logits, prompt, response, config)

    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


DISTRIBUTION_CONFIGS = ["temperature-0.7", "top-p-0.9", "top-k-8-top-p-0.8", "combined", "greedy-penalty-1.3"]


@pytest.mark.parametrize("name", DISTRIBUTION_CONFIGS)
@pytest.mark.parametrize("step", [6, 10], ids=lambda s: f"step={s}")
def test_every_id_scored_at_a_step_is_the_distribution_the_sampler_draws_from(name, step):
    config = CONFIGS[name]
    vocab = 300
    logits = make_logits(3, vocab=vocab)[: step + 1]
    prompt = make_prompt(3, vocab)
    prefix, _ = sample_response(logits[:step], prompt, SamplerConfig(**{**config.to_dict(), "seed": 3}))
    scored = np.array([score(logits, prompt, [*prefix, token], config)[-1] for token in range(vocab)])
    finite = np.isfinite(scored)

    context = np.asarray(prompt + prefix, dtype=np.int64)
    draws = 4000
    counts = np.zeros(vocab)
    sampler = Sampler(SamplerConfig(**{**config.to_dict(), "seed": 4}))
    for _ in range(draws):
        drawn = sampler.sample(logits[step], context)
        assert finite[drawn.token_id], f"the sampler drew id {drawn.token_id}, scored -inf"
        if not config.greedy:
            assert scored[drawn.token_id] == pytest.approx(drawn.logprob, abs=TOL)
        counts[drawn.token_id] += 1

    if config.greedy:
        assert scored[finite].tolist() == [0.0]
        assert counts[finite].tolist() == [draws]
        return
    assert np.exp(scored[finite]).sum() == pytest.approx(1.0, abs=1e-9)
    # Seeded draws: a fixed outcome, each frequency within 5 standard errors of its probability.
    probs = np.exp(scored)
    margin = 5 * np.sqrt(probs * (1 - probs) / draws) + 1 / draws
    assert np.all(np.abs(counts / draws - probs) <= margin)


def _hand_cases() -> list:
    """(logits, config, {token: expected log-prob}), expected worked out by hand."""
    return [
        # Nucleus 0.5 + 0.3 = 0.8 >= 0.7: ids 2 and 3 are cut.
        pytest.param(
            np.log([0.5, 0.3, 0.15, 0.05]),
            SamplerConfig(temperature=1.0, top_p=0.7),
            {0: math.log(0.5 / 0.8), 1: math.log(0.3 / 0.8), 2: -math.inf, 3: -math.inf},
            id="top-p-cuts-the-tail",
        ),
        # Mass reaches top_p exactly after two of four equal ids: the two lowest ids stay.
        pytest.param(
            np.zeros(4),
            SamplerConfig(temperature=1.0, top_p=0.5),
            {0: math.log(0.5), 1: math.log(0.5), 2: -math.inf, 3: -math.inf},
            id="top-p-boundary-tie-keeps-lowest-ids",
        ),
        # Ids 1..3 tie for second place: top_k=2 keeps only the lowest of them.
        pytest.param(
            np.array([3.0, 2.0, 2.0, 2.0, 1.0]),
            SamplerConfig(temperature=1.0, top_k=2),
            {0: 3 - np.logaddexp(3, 2), 1: 2 - np.logaddexp(3, 2), 2: -math.inf, 3: -math.inf, 4: -math.inf},
            id="top-k-boundary-tie-keeps-lowest-id",
        ),
        # Same logits at T=0.5 ([6, 4, 4, 4, 2]); top-k 4 renormalised, then top-p 0.9 cuts id 3.
        pytest.param(
            np.array([3.0, 2.0, 2.0, 2.0, 1.0]),
            SamplerConfig(temperature=0.5, top_k=4, top_p=0.9),
            {
                0: 6 - np.logaddexp(6, np.log(2) + 4),
                1: 4 - np.logaddexp(6, np.log(2) + 4),
                2: 4 - np.logaddexp(6, np.log(2) + 4),
                3: -math.inf,
                4: -math.inf,
            },
            id="top-k-then-top-p",
        ),
    ]


@pytest.mark.parametrize(("logits", "config", "expected"), _hand_cases())
def test_tokens_outside_the_truncated_set_score_minus_inf(logits, config, expected):
    logits = logits.astype(np.float32)
    got = {token: score(logits[None, :], [], [token], config)[0] for token in expected}
    assert got == pytest.approx(expected, abs=TOL)

    # The sampler agrees: it only ever draws the kept ids, with the same log-probs.
    for seed in range(300):
        drawn = Sampler(SamplerConfig(**{**config.to_dict(), "seed": seed})).sample(logits)
        assert math.isfinite(expected[drawn.token_id])
        assert drawn.logprob == pytest.approx(expected[drawn.token_id], abs=TOL)


def test_an_empty_response_scores_nothing():
    got = sampler_logprobs(torch.zeros(0, 10), [1, 2], [], CONFIGS["combined"])
    assert got.dtype == torch.float64 and got.shape == (0,)


@pytest.mark.parametrize(
    ("logits", "prompt", "response", "message"),
    [
        pytest.param(torch.zeros(3, 10), [1], [1, 2], "logits has 3 rows but response_ids has 2 tokens", id="rows"),
        pytest.param(torch.zeros(10), [1], [1], "2-D float tensor", id="one-d"),
        pytest.param(torch.zeros(1, 10, dtype=torch.int64), [1], [1], "2-D float tensor", id="int-logits"),
        pytest.param(torch.zeros(2, 10), [1], [1, 10], "response_ids holds id 10", id="response-id-too-large"),
        pytest.param(torch.zeros(2, 10), [-1], [1, 2], "prompt_ids holds id -1", id="negative-prompt-id"),
        pytest.param(torch.zeros(1, 10), [1.5], [1], "prompt_ids must be a 1-D sequence of ints", id="float-id"),
        pytest.param(torch.zeros(1, 0), [], [0], "V = 0", id="empty-vocabulary"),
    ],
)
def test_bad_shapes_and_ids_are_value_errors_naming_the_values(logits, prompt, response, message):
    with pytest.raises(ValueError, match=message):
        sampler_logprobs(logits, prompt, response, CONFIGS["combined"])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (math.nan, "row 1 contains NaN or \\+inf"),
        (math.inf, "row 1 contains NaN or \\+inf"),
        (-math.inf, "row 1 is all"),
    ],
    ids=["nan", "plus-inf", "all-minus-inf"],
)
def test_logits_the_sampler_refuses_are_refused(bad, message):
    logits = np.zeros((2, 10), dtype=np.float32)
    logits[1] = bad
    with pytest.raises(ValueError):
        Sampler(CONFIGS["combined"]).sample(logits[1])
    with pytest.raises(ValueError, match=message):
        sampler_logprobs(torch.from_numpy(logits), [], [0, 1], CONFIGS["combined"])
