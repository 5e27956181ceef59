"""Sampler: truncation masks, both log-probs against plain references, determinism, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from npcrl.runtime import sampler as sampler_module
from npcrl.runtime.sampler import (
    _NEAR_BEST_NATS,
    SampledToken,
    Sampler,
    SamplerConfig,
    _near_best_nucleus,
    _truncate,
    _Workspace,
)


def logsumexp(z: np.ndarray) -> float:
    z = np.asarray(z, dtype=np.float64)
    top = z[np.isfinite(z)].max()
    return float(top + np.log(np.exp(z - top).sum()))


def log_softmax(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float64) - logsumexp(z)


def reference_kept(z: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Top-k then top-p by a full sort of the vocabulary: descending logit, ties to the lower id."""
    order = np.lexsort((np.arange(z.size), -z))
    if 0 < top_k < z.size:
        order = order[:top_k]
    if top_p < 1.0:
        cumulative = np.cumsum(np.exp(log_softmax(z[order])))
        reached = np.flatnonzero(cumulative >= top_p)
        order = order[: reached[0] + 1 if reached.size else order.size]
    return order


def reference_distribution(
    logits: np.ndarray, config: SamplerConfig, context: list[int] | tuple[int, ...] = ()
) -> dict[int, float]:
    """{token: log-prob} of the distribution the sampler should draw from."""
    x = np.asarray(logits, dtype=np.float64).copy()
    for token in set(context):
        if config.repetition_penalty != 1.0:
            x[token] = x[token] / config.repetition_penalty if x[token] > 0 else x[token] * config.repetition_penalty
    z = x / config.temperature
    kept = reference_kept(z, config.top_k, config.top_p)
    return dict(zip(kept.tolist(), log_softmax(z[kept]).tolist(), strict=True))


# Without truncation the normaliser comes from float32 exp weights (see npcrl.runtime.sampler): ~1e-7.
# Truncated draws renormalise over the kept ids in float64 and match to rounding.
NORMALISER_TOL = 1e-6
EXACT_TOL = 1e-9


def draw(sampler: Sampler, logits: np.ndarray, n: int, context=()) -> list[SampledToken]:
    return [sampler.sample(logits, context) for _ in range(n)]


# --- top-k --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 40], ids=lambda k: f"k={k}")
def test_top_k_draws_only_the_k_largest_with_renormalised_logprob(k):
    logits = np.random.default_rng(k).normal(0.0, 2.0, 300).astype(np.float32)
    config = SamplerConfig(temperature=0.9, top_k=k, seed=k)
    z = logits.astype(np.float64) / config.temperature
    top = np.argsort(-z)[:k]
    expected = dict(zip(top.tolist(), log_softmax(z[top]).tolist(), strict=True))
    for token in draw(Sampler(config), logits, 300):
        assert token.token_id in expected
        assert token.logprob == pytest.approx(expected[token.token_id], abs=EXACT_TOL)
    if k == 1:
        assert token.logprob == 0.0


# --- top-p --------------------------------------------------------------------------------------

HALVING = np.log([0.5, 0.25, 0.125, 0.0625, 0.0625])


@pytest.mark.parametrize(
    ("logits", "top_p", "expected"),
    [
        pytest.param(HALVING, 1e-9, [0], id="tiny-p-keeps-the-top-token"),
        pytest.param(HALVING, 0.5 - 1e-6, [0], id="just-below-first-mass"),
        pytest.param(HALVING, 0.5 + 1e-6, [0, 1], id="just-above-first-mass"),
        pytest.param(HALVING, 0.75 - 1e-6, [0, 1], id="just-below-two"),
        pytest.param(HALVING, 0.75 + 1e-6, [0, 1, 2], id="just-above-two"),
        pytest.param(HALVING, 0.95, [0, 1, 2, 3, 4], id="needs-everything"),
        # exp(-log 4) is exactly 0.25: the mass after two tokens is exactly 0.5 == top_p.
        pytest.param(np.zeros(4), 0.5, [0, 1], id="exact-boundary-with-ties-to-lower-ids"),
        pytest.param(np.zeros(2), 0.5, [0], id="exact-boundary-first-token"),
        pytest.param(np.array([10.0, 0.0, 0.0, 0.0]), 0.9, [0], id="one-token-holds-more-than-p"),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(logits, top_p, expected):
    z = np.asarray(logits, dtype=np.float64)
    kept = _truncate(z, logsumexp(z), 0, top_p, _Workspace(z.size))
    assert kept.tolist() == expected

    config = SamplerConfig(temperature=1.0, top_p=top_p, seed=3)
    tokens = draw(Sampler(config), z, 400)
    expected_logprobs = dict(zip(expected, log_softmax(z[expected]).tolist(), strict=True))
    assert {t.token_id for t in tokens} == set(expected)
    for token in tokens:
        assert token.logprob == pytest.approx(expected_logprobs[token.token_id], abs=EXACT_TOL)
    if len(expected) == 1:
        assert all(t.logprob == 0.0 for t in tokens)


def test_top_p_one_is_off():
    logits = np.array([3.0, 0.0, -2.0])
    tokens = draw(Sampler(SamplerConfig(temperature=1.0, top_p=1.0, seed=0)), logits, 2000)
    assert {t.token_id for t in tokens} == {0, 1, 2}


# --- the argpartition fast path against the full-sort reference --------------------------------


def _quantised(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.round(rng.normal(0.0, 2.0, size))  # a handful of distinct values: many ties


def _masked(rng: np.random.Generator, size: int) -> np.ndarray:
    out = rng.normal(0.0, 1.0, size)
    out[rng.random(size) < 0.98] = -np.inf
    return out


def _flat_masked(rng: np.random.Generator, size: int) -> np.ndarray:
    out = rng.normal(0.0, 0.01, size)
    out[rng.random(size) < 0.3] = -np.inf
    return out


FAST_PATH_CASES = [
    # (logits maker, top_k, top_p, nucleus size bounds proving which path ran)
    pytest.param(lambda r, v: r.normal(0.0, 4.0, v), 0, 0.9, (1, 256), id="peaked-top-p-in-candidates"),
    pytest.param(lambda r, v: r.normal(0.0, 2.0, v), 0, 0.95, (257, 4096), id="top-p-wider-pass"),
    pytest.param(lambda r, v: r.normal(0.0, 0.05, v), 0, 0.9, (4097, None), id="flat-top-p-full-sort-fallback"),
    pytest.param(_quantised, 0, 0.5, (1, None), id="top-p-ties"),
    pytest.param(_quantised, 0, 0.99, (257, None), id="top-p-ties-wider-pass"),
    pytest.param(lambda r, v: np.round(r.normal(0.0, 0.5, v)), 0, 0.9, (4097, None), id="top-p-ties-full-sort"),
    pytest.param(lambda r, v: np.round(r.normal(0.0, 0.05, v), 3), 0, 0.9, (4097, None), id="fine-ties-full-sort"),
    pytest.param(_flat_masked, 0, 0.995, (4097, None), id="masked-full-sort"),
    pytest.param(lambda r, v: r.normal(0.0, 3.0, v), 50, 1.0, (50, 50), id="top-k"),
    pytest.param(_quantised, 37, 1.0, (37, 37), id="top-k-ties-at-boundary"),
    pytest.param(lambda r, v: r.normal(0.0, 3.0, v), 300, 0.8, (1, 300), id="top-k-then-top-p"),
    pytest.param(_masked, 200, 1.0, (200, 200), id="top-k-beyond-finite-logits"),
    pytest.param(lambda r, v: r.normal(0.0, 3.0, v) * 1e40, 10, 1.0, (10, 10), id="beyond-float32-range"),
]


@pytest.mark.parametrize(("make", "top_k", "top_p", "bounds"), FAST_PATH_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_equals_full_sort_reference(make, top_k, top_p, bounds, seed):
    size = 6000
    z = np.asarray(make(np.random.default_rng(seed), size), dtype=np.float64)
    kept = _truncate(z, logsumexp(z), top_k, top_p, _Workspace(size))
    expected = reference_kept(z, top_k, top_p)
    np.testing.assert_array_equal(np.sort(kept), np.sort(expected))
    if expected.size <= 4096:
        np.testing.assert_array_equal(kept, expected)  # partition passes return best first
    low, high = bounds
    assert low <= expected.size <= (high or size)


def _peaked(rng: np.random.Generator, size: int) -> np.ndarray:
    out = rng.normal(0.0, 1.0, size)
    out[rng.choice(size, 12, replace=False)] += rng.uniform(8.0, 12.0, 12)  # a trained LM's few likely tokens
    return out


def _tie_at_threshold(rng: np.random.Generator, size: int) -> np.ndarray:
    out = rng.normal(-20.0, 1.0, size)
    out[:5] = 10.0
    out[5:40] = 10.0 - _NEAR_BEST_NATS  # exactly on the threshold: all out together
    out[40:60] = 10.0 - _NEAR_BEST_NATS + 1e-9  # just inside
    return out


NEAR_BEST_CASES = [
    # (logits maker, top_p, whether the tokens near the best hold the nucleus)
    pytest.param(_peaked, 0.9, True, id="peaked"),
    pytest.param(_tie_at_threshold, 0.999, True, id="ties-on-the-threshold"),
    pytest.param(lambda r, v: r.normal(0.0, 4.0, v), 0.9, False, id="too-many-near-the-best"),
    pytest.param(lambda r, v: np.r_[np.full(3, 9.0), r.normal(0.0, 1.0, v - 3)], 0.9, False, id="mass-beyond-them"),
]


@pytest.mark.parametrize(("make", "top_p", "held"), NEAR_BEST_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_best_nucleus_is_exactly_the_ranked_search(monkeypatch, make, top_p, held, seed):
    size = 6000
    z = np.asarray(make(np.random.default_rng(seed), size), dtype=np.float64)
    lse, ws = logsumexp(z), _Workspace(size)
    assert (_near_best_nucleus(z, lse, top_p, ws) is not None) == held  # which path runs
    kept = _truncate(z, lse, 0, top_p, ws)
    monkeypatch.setattr(sampler_module, "_near_best_nucleus", lambda *args: None)
    ranked = _truncate(z, lse, 0, top_p, _Workspace(size))
    np.testing.assert_array_equal(kept, ranked)  # the same tokens in the same order: the same draws


def test_fast_path_end_to_end_on_a_full_size_vocabulary():
    size = 49152
    rng = np.random.default_rng(7)
    for config in (
        SamplerConfig(temperature=0.7, top_p=0.9, seed=1),
        SamplerConfig(temperature=0.7, top_k=40, top_p=0.95, repetition_penalty=1.3, seed=2),
        SamplerConfig(temperature=1.5, top_p=0.9, seed=3),  # flat enough for the fallback
    ):
        sampler = Sampler(config)
        for _ in range(5):
            logits = (rng.normal(0.0, 3.0, size) + 8.0 * (rng.random(size) < 0.001)).astype(np.float32)
            context = rng.integers(0, size, 500).tolist()
            expected = reference_distribution(logits, config, context)
            token = sampler.sample(logits, context)
            assert token.token_id in expected
            assert token.logprob == pytest.approx(expected[token.token_id], abs=EXACT_TOL)


# --- determinism --------------------------------------------------------------------------------


def _sequence(seed: int | None, steps: int = 60) -> list[int]:
    rng = np.random.default_rng(123)
    sampler = Sampler(SamplerConfig(temperature=1.0, top_p=0.95, seed=seed))
    return [sampler.sample(rng.normal(0.0, 1.0, 500).astype(np.float32), []).token_id for _ in range(steps)]


def test_same_seed_same_tokens_and_different_seeds_differ():
    assert _sequence(5) == _sequence(5)
    assert _sequence(5) != _sequence(6)


# --- empirical frequencies ----------------------------------------------------------------------

FREQUENCY_LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -2.0], dtype=np.float32)


@pytest.mark.parametrize(
    ("config", "context"),
    [
        pytest.param(SamplerConfig(temperature=1.0, seed=1), (), id="plain"),
        pytest.param(SamplerConfig(temperature=0.5, top_k=4, seed=2), (), id="top-k"),
        pytest.param(SamplerConfig(temperature=1.3, top_p=0.8, seed=3), (), id="top-p"),
        pytest.param(SamplerConfig(temperature=1.0, repetition_penalty=1.8, seed=4), (0, 4, 0), id="penalty"),
    ],
)
def test_empirical_frequencies_match_exp_logprob(config, context):
    n = 4000
    tokens = draw(Sampler(config), FREQUENCY_LOGITS, n, context)
    logprobs: dict[int, float] = {}
    for token in tokens:
        # One token, one log-prob: the reported value is a function of the distribution.
        assert logprobs.setdefault(token.token_id, token.logprob) == token.logprob
    expected = reference_distribution(FREQUENCY_LOGITS, config, context)
    assert set(logprobs) == set(expected)
    for token_id, logprob in logprobs.items():
        assert logprob == pytest.approx(expected[token_id], abs=NORMALISER_TOL)
    counts = np.bincount([t.token_id for t in tokens], minlength=FREQUENCY_LOGITS.size)
    ids = sorted(expected)
    probs = np.exp([expected[i] for i in ids])
    assert probs.sum() == pytest.approx(1.0)
    chi2 = float(((counts[ids] - n * probs) ** 2 / (n * probs)).sum())
    # df <= 5; 25 is beyond the 99.99th percentile of chi-square(5).
    assert chi2 < 25.0, (counts, n * probs)


# --- full_logprob -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0, 1.7], ids=lambda t: f"T={t}")
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
def test_full_logprob_is_log_softmax_of_raw_logits_over_t(temperature, dtype):
    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 3.0, 2000).astype(dtype)
    # Penalty and truncation active: full_logprob must ignore both.
    config = SamplerConfig(temperature=temperature, top_k=30, top_p=0.9, repetition_penalty=1.4, seed=0)
    reference = log_softmax(logits.astype(np.float64) / (temperature or 1.0))
    sampler = Sampler(config)
    context = rng.integers(0, 2000, 300)
    for _ in range(50):
        token = sampler.sample(logits, context)
        assert token.full_logprob == pytest.approx(reference[token.token_id], abs=NORMALISER_TOL)


# --- repetition penalty -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [pytest.param([2.0, 1.9, 0.0], id="positive"), pytest.param([-1.0, -1.1, -5.0], id="negative")],
)
def test_repetition_penalty_can_flip_greedy_choice(logits):
    logits = np.array(logits, dtype=np.float32)
    assert Sampler(SamplerConfig(temperature=0.0)).sample(logits, [0]).token_id == 0
    penalised = Sampler(SamplerConfig(temperature=0.0, repetition_penalty=1.2)).sample(logits, [0, 0])
    assert penalised.token_id == 1
    assert penalised.logprob == 0.0
    # full_logprob is the raw distribution's (T=1 when greedy), penalty or not.
    assert penalised.full_logprob == pytest.approx(log_softmax(logits)[1])


def test_repetition_penalty_lowers_repeated_tokens_of_both_signs():
    logits = np.array([1.0, -0.5, 0.2, -2.0], dtype=np.float32)
    context = [0, 1, 1]
    config = SamplerConfig(temperature=1.0, repetition_penalty=1.5, seed=0)
    seen = {t.token_id: t.logprob for t in draw(Sampler(config), logits, 1000, context)}
    plain = log_softmax(logits)
    expected = log_softmax(np.array([1.0 / 1.5, -0.5 * 1.5, 0.2, -2.0]))
    assert set(seen) == {0, 1, 2, 3}
    for token_id, logprob in seen.items():
        assert logprob == pytest.approx(expected[token_id], abs=NORMALISER_TOL)
    assert seen[0] < plain[0]
    assert seen[1] < plain[1]
    assert seen[2] > plain[2]  # the mass went to the tokens not repeated


@pytest.mark.parametrize(
    ("logits", "penalty"),
    [
        pytest.param([1.0, 5.0, 0.0], 0.1, id="penalty-below-one-lifts-above-the-max"),
        pytest.param([30.0, 0.0, 1.0], 4.0, id="penalised-max-drops-far"),
    ],
)
def test_repetition_penalty_rescaling_paths(logits, penalty):
    logits = np.array(logits, dtype=np.float32)
    config = SamplerConfig(temperature=1.0, repetition_penalty=penalty, seed=0)
    expected = reference_distribution(logits, config, [0])
    for token in draw(Sampler(config), logits, 300, [0]):
        assert token.logprob == pytest.approx(expected[token.token_id], abs=NORMALISER_TOL)


@pytest.mark.parametrize("context", [[0, 5], [-1], [[0, 1]], [0.5]], ids=["too-large", "negative", "2-D", "float"])
def test_bad_context_ids_raise(context):
    with pytest.raises(ValueError, match="context_ids"):
        Sampler(SamplerConfig(repetition_penalty=1.2)).sample(np.zeros(5, np.float32), context)


# --- greedy -------------------------------------------------------------------------------------


def test_greedy_picks_argmax_with_logprob_zero_and_ties_to_lowest_id():
    logits = np.array([1.0, 3.0, 3.0, 2.0], dtype=np.float32)
    sampler = Sampler(SamplerConfig(temperature=0.0, top_k=2, top_p=0.5))
    token = sampler.sample(logits, [])
    assert (token.token_id, token.logprob) == (1, 0.0)
    assert token.full_logprob == pytest.approx(log_softmax(logits)[1])
    assert type(token.token_id) is int and type(token.logprob) is float and type(token.full_logprob) is float
    assert SamplerConfig(temperature=0.0).greedy
    assert not SamplerConfig(temperature=0.1).greedy


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", "hot"),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", math.nan),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.inf),
        ("max_new_tokens", 0),
        ("max_new_tokens", 3.0),
        ("seed", -1),
        ("seed", 1.5),
        ("stop_strings", "END"),
        ("stop_strings", [""]),
        ("stop_strings", [3]),
        ("stop_strings", None),
    ],
    ids=lambda v: repr(v),
)
def test_invalid_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{field: value})


def test_config_dict_round_trip_is_json_friendly():
    config = SamplerConfig(temperature=1, top_k=5, top_p=0.9, seed=7, stop_strings=["\n\n", "<|im_end|>"])
    assert config.temperature == 1.0 and isinstance(config.temperature, float)
    assert config.stop_strings == ("\n\n", "<|im_end|>")
    data = json.loads(json.dumps(config.to_dict()))
    assert SamplerConfig.from_dict(data) == config
    assert SamplerConfig.from_dict({}) == SamplerConfig()


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="temprature.*typo_key|typo_key.*temprature"):
        SamplerConfig.from_dict({"temprature": 0.5, "typo_key": 1, "top_k": 3})
    with pytest.raises(ValueError, match="mapping"):
        SamplerConfig.from_dict([("top_k", 3)])


# --- logits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [
        pytest.param(np.zeros((2, 3), np.float32), id="2-D"),
        pytest.param(np.zeros(0, np.float32), id="empty"),
        pytest.param(np.array([0.0, np.nan], np.float32), id="nan"),
        pytest.param(np.array([0.0, np.inf], np.float32), id="plus-inf"),
        pytest.param(np.full(3, -np.inf, np.float32), id="all-minus-inf"),
        pytest.param(np.arange(3), id="integers"),
    ],
)
def test_bad_logits_raise(logits):
    with pytest.raises(ValueError, match="logits"):
        Sampler(SamplerConfig(seed=0)).sample(logits, [])


def test_float16_logits_work():
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 4.0, 5000).astype(np.float16)
    logits[:10] = -np.inf  # masked tokens are never drawn
    config = SamplerConfig(temperature=0.8, top_p=0.9, seed=0)
    expected = reference_distribution(logits, config)
    full = log_softmax(logits.astype(np.float64) / 0.8)
    for token in draw(Sampler(config), logits, 100):
        assert token.token_id in expected and token.token_id >= 10
        assert token.logprob == pytest.approx(expected[token.token_id], abs=EXACT_TOL)
        assert token.full_logprob == pytest.approx(full[token.token_id], abs=NORMALISER_TOL)


def test_vocabulary_size_may_change_between_calls():
    sampler = Sampler(SamplerConfig(temperature=1.0, top_k=3, seed=0))
    assert 0 <= sampler.sample(np.zeros(10, np.float32), []).token_id < 3
    assert 0 <= sampler.sample(np.zeros(4, np.float32), []).token_id < 3
