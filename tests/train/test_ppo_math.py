"""PPO math against plain-Python references: row by row, token by token, on random right-padded batches."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import torch

from npcrl.train.kl_control import AdaptiveKLController, FixedKLController
from npcrl.train.ppo_math import (
    approx_kl,
    clip_scores,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    k3_kl,
    kl_penalty_rewards,
    last_token_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    selective_log_softmax,
    standardize_scores,
    truncated_importance_weights,
)

# (seed, B, T): a single row, a single column, and ordinary batches.
SHAPES = [
    pytest.param(0, 1, 1, id="1x1"),
    pytest.param(1, 5, 1, id="5x1-all-length-1"),
    pytest.param(2, 1, 9, id="1x9"),
    pytest.param(3, 6, 7, id="6x7"),
    pytest.param(4, 16, 33, id="16x33"),
]
BATCHES = [pytest.param(3, 6, 7, id="6x7"), pytest.param(4, 16, 33, id="16x33"), pytest.param(5, 3, 2, id="3x2")]


def random_lengths(gen: torch.Generator, batch: int, tokens: int) -> list[int]:
    """Random row lengths in [1, tokens]; with 3+ rows, one row of length 1 and one full row."""
    lengths = torch.randint(1, tokens + 1, (batch,), generator=gen).tolist()
    if batch >= 3:
        lengths[0], lengths[1] = 1, tokens
    return lengths


def mask_from_lengths(lengths: list[int], tokens: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    rows = [[1 if t < n else 0 for t in range(tokens)] for n in lengths]
    return torch.tensor(rows).to(dtype)


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def with_garbage(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN / inf / -inf written into the padding, which no function may let through."""
    junk = torch.tensor([math.nan, math.inf, -math.inf], dtype=x.dtype)
    filler = junk[torch.arange(x.numel()) % 3].reshape(x.shape)
    return torch.where(mask.bool(), x, filler)


def valid_values(x: torch.Tensor, lengths: list[int]) -> list[float]:
    return [float(x[b, t]) for b, n in enumerate(lengths) for t in range(n)]


def assert_padding_zero(x: torch.Tensor, lengths: list[int]) -> None:
    for b, n in enumerate(lengths):
        assert x[b, n:].tolist() == [0.0] * (x.shape[1] - n), f"row {b} padding is {x[b, n:].tolist()}"


# --- masked reductions -------------------------------------------------------------------------


@pytest.mark.parametrize("seed,batch,tokens", SHAPES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32], ids=["bool-mask", "float-mask"])
def test_masked_sum_and_mean_match_loops(seed: int, batch: int, tokens: int, mask_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens, mask_dtype)
    x = randn(gen, batch, tokens)
    xg = with_garbage(x, mask)

    flat = valid_values(x, lengths)
    assert float(masked_sum(xg, mask)) == pytest.approx(math.fsum(flat), abs=1e-12)
    assert float(masked_mean(xg, mask)) == pytest.approx(statistics.fmean(flat), abs=1e-12)

    row_sums = [math.fsum(float(x[b, t]) for t in range(n)) for b, n in enumerate(lengths)]
    row_means = [s / n for s, n in zip(row_sums, lengths, strict=True)]
    assert masked_sum(xg, mask, dim=1).tolist() == pytest.approx(row_sums, abs=1e-12)
    assert masked_mean(xg, mask, dim=1).tolist() == pytest.approx(row_means, abs=1e-12)

    col_sums = [math.fsum(float(x[b, t]) for b, n in enumerate(lengths) if t < n) for t in range(tokens)]
    col_counts = [sum(1 for n in lengths if t < n) for t in range(tokens)]
    col_means = [s / c if c else 0.0 for s, c in zip(col_sums, col_counts, strict=True)]
    assert masked_sum(xg, mask, dim=0).tolist() == pytest.approx(col_sums, abs=1e-12)
    assert masked_mean(xg, mask, dim=0).tolist() == pytest.approx(col_means, abs=1e-12)


def test_masked_mean_gradient_reaches_only_valid_tokens_even_with_nan_padding() -> None:
    lengths = [3, 1, 4]
    mask = mask_from_lengths(lengths, 4)
    x = with_garbage(torch.arange(12, dtype=torch.float64).reshape(3, 4), mask).requires_grad_()
    masked_mean(x, mask).backward()
    assert x.grad is not None
    expected = [[1 / 8 if t < n else 0.0 for t in range(4)] for n in lengths]
    assert x.grad.tolist() == expected


def test_masked_mean_empty_mask_raises_and_empty_row_is_zero() -> None:
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="no element"):
        masked_mean(x, torch.zeros(2, 3, dtype=torch.bool))
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x * 5, mask, dim=1).tolist() == [5.0, 0.0]


@pytest.mark.parametrize("seed,batch,tokens", BATCHES)
def test_masked_var_matches_statistics_module(seed: int, batch: int, tokens: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens)
    x = randn(gen, batch, tokens, scale=3.0) + 2.0
    flat = valid_values(x, lengths)
    xg = with_garbage(x, mask)
    assert float(masked_var(xg, mask)) == pytest.approx(statistics.variance(flat), rel=1e-10)
    assert float(masked_var(xg, mask, unbiased=False)) == pytest.approx(statistics.pvariance(flat), rel=1e-10)


def test_masked_var_needs_two_elements_when_unbiased() -> None:
    x = torch.tensor([[4.0, 9.0]])
    one = torch.tensor([[True, False]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, one)
    assert float(masked_var(x, one, unbiased=False)) == 0.0


@pytest.mark.parametrize("seed,batch,tokens", BATCHES)
@pytest.mark.parametrize("shift_mean", [True, False], ids=["shift", "keep-mean"])
def test_masked_whiten_matches_loop(seed: int, batch: int, tokens: int, shift_mean: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens)
    x = randn(gen, batch, tokens, scale=4.0) + 7.0
    flat = valid_values(x, lengths)
    mean, var = statistics.fmean(flat), statistics.variance(flat)

    out = masked_whiten(with_garbage(x, mask), mask, shift_mean=shift_mean)

    for b, n in enumerate(lengths):
        for t in range(n):
            expected = (float(x[b, t]) - mean) / math.sqrt(var + 1e-8) + (0.0 if shift_mean else mean)
            assert float(out[b, t]) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert_padding_zero(out, lengths)
    whitened = valid_values(out, lengths)
    assert statistics.fmean(whitened) == pytest.approx(0.0 if shift_mean else mean, abs=1e-9)
    assert statistics.variance(whitened) == pytest.approx(1.0, rel=1e-6)


# --- log-probabilities and entropy -------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [pytest.param((7,), id="1d"), pytest.param((3, 5), id="2d"), pytest.param((2, 4, 3), id="3d")],
)
def test_selective_log_softmax_equals_log_softmax_gather(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(11)
    vocab = 50
    logits = (torch.randn(*shape, vocab, generator=gen) * 5).requires_grad_()
    ids = torch.randint(0, vocab, shape, generator=gen)

    got = selective_log_softmax(logits, ids)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, expected)

    (grad_got,) = torch.autograd.grad(got.sum(), logits)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad_got, grad_expected)


def test_selective_log_softmax_bf16_is_computed_in_float32() -> None:
    gen = torch.Generator().manual_seed(12)
    logits = (torch.randn(4, 6, 300, generator=gen) * 8).to(torch.bfloat16)
    ids = torch.randint(0, 300, (4, 6), generator=gen)
    got = selective_log_softmax(logits, ids)
    assert got.dtype == torch.float32
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


def test_selective_log_softmax_rejects_bad_ids() -> None:
    logits = torch.zeros(2, 3, 10)
    with pytest.raises(ValueError, match=r"\(2, 3, 10\).*\(2, 4\)"):
        selective_log_softmax(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        selective_log_softmax(logits, torch.full((2, 3), 10))
    with pytest.raises(ValueError, match="integer"):
        selective_log_softmax(logits, torch.zeros(2, 3))


def reference_entropy(row: list[float]) -> float:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = math.fsum(exps)
    return -math.fsum((e / total) * math.log(e / total) for e in exps if e > 0)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0], ids=["flat", "normal", "peaked"])
def test_entropy_matches_loop(scale: float) -> None:
    gen = torch.Generator().manual_seed(13)
    logits = randn(gen, 3, 4, 20, scale=scale)
    got = entropy_from_logits(logits)
    assert got.shape == (3, 4)
    for b in range(3):
        for t in range(4):
            assert float(got[b, t]) == pytest.approx(reference_entropy(logits[b, t].tolist()), rel=1e-9, abs=1e-12)
    p = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(got, -(p * torch.log_softmax(logits, dim=-1)).sum(-1))


def test_entropy_with_filtered_tokens_is_finite_in_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(14)
    base = randn(gen, 2, 8)
    keep = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    logits = torch.where(keep, base, -math.inf).requires_grad_()
    got = entropy_from_logits(logits)
    expected = [
        reference_entropy([v for v, k in zip(base[b].tolist(), keep[b].tolist(), strict=True) if k]) for b in range(2)
    ]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[1] == 0.0  # one surviving token: no uncertainty
    got.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    assert logits.grad[~keep].tolist() == [0.0] * int((~keep).sum())


# --- last token, KL-penalised rewards ----------------------------------------------------------


@pytest.mark.parametrize("seed,batch,tokens", SHAPES)
def test_last_token_index_matches_loop(seed: int, batch: int, tokens: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    for dtype in (torch.bool, torch.float32, torch.long):
        mask = mask_from_lengths(lengths, tokens, dtype)
        expected = [max(t for t in range(tokens) if mask[b, t]) for b in range(batch)]
        assert last_token_index(mask).tolist() == expected


@pytest.mark.parametrize(
    "rows,match",
    [
        pytest.param([[1, 1, 0], [0, 0, 0]], r"rows \[1\] have no valid token", id="empty-row"),
        pytest.param([[1, 1, 1], [0, 1, 1]], "row 1 is not right-padded", id="left-padded"),
        pytest.param([[1, 0, 1]], "row 0 is not right-padded", id="hole"),
    ],
)
def test_last_token_index_rejects_bad_masks(rows: list[list[int]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        last_token_index(torch.tensor(rows, dtype=torch.bool))


def test_additive_attention_mask_is_rejected() -> None:
    additive = torch.tensor([[0.0, 0.0, -math.inf]])
    with pytest.raises(ValueError, match="only 0 and 1"):
        last_token_index(additive)


@pytest.mark.parametrize("seed,batch,tokens", SHAPES)
def test_kl_penalty_rewards_from_exact_kl_match_loop(seed: int, batch: int, tokens: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens)
    kl = randn(gen, batch, tokens).abs()
    scores = randn(gen, batch)

    rewards = kl_penalty_rewards(with_garbage(kl, mask), scores, mask, 0.2)

    for b, n in enumerate(lengths):
        for t in range(tokens):
            r = (-0.2 * float(kl[b, t]) if t < n else 0.0) + (float(scores[b]) if t == n - 1 else 0.0)
            assert float(rewards[b, t]) == pytest.approx(r, abs=1e-6)


def test_kl_penalty_rewards_rejects_wrong_shapes() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"scores has shape \(2, 3\) but mask has shape \(2, 3\)"):
        kl_penalty_rewards(z, z, torch.ones(2, 3, dtype=torch.bool), 0.1)
    with pytest.raises(ValueError, match=r"kl has shape \(2, 4\) but mask has shape \(2, 3\)"):
        kl_penalty_rewards(torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool), 0.1)


# --- GAE ---------------------------------------------------------------------------------------


def reference_gae(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """cleanrl's loop for one episode (one row's valid tokens), ending in a terminal state."""
    n = len(rewards)
    advantages = [0.0] * n
    lastgaelam = 0.0
    for t in reversed(range(n)):
        nextnonterminal = 0.0 if t == n - 1 else 1.0
        nextvalues = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


@pytest.mark.parametrize("seed,batch,tokens", SHAPES)
@pytest.mark.parametrize(
    "gamma,lam",
    [
        pytest.param(1.0, 0.95, id="g1-l0.95"),
        pytest.param(0.9, 0.8, id="g0.9-l0.8"),
        pytest.param(1.0, 1.0, id="g1-l1"),
        pytest.param(0.0, 0.5, id="g0"),
        pytest.param(0.99, 0.0, id="l0-td"),
    ],
)
def test_gae_matches_cleanrl_loop(seed: int, batch: int, tokens: int, gamma: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens)
    rewards, values = randn(gen, batch, tokens), randn(gen, batch, tokens)

    advantages, returns = gae(with_garbage(rewards, mask), with_garbage(values, mask), mask, gamma, lam)

    for b, n in enumerate(lengths):
        ref_adv, ref_ret = reference_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        assert advantages[b, :n].tolist() == pytest.approx(ref_adv, abs=1e-10)
        assert returns[b, :n].tolist() == pytest.approx(ref_ret, abs=1e-10)
    assert_padding_zero(advantages, lengths)
    assert_padding_zero(returns, lengths)


@pytest.mark.parametrize("seed,batch,tokens", BATCHES)
def test_gae_gamma_one_lambda_one_is_future_reward_sum_minus_value(seed: int, batch: int, tokens: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens)
    rewards, values = randn(gen, batch, tokens), randn(gen, batch, tokens)
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    for b, n in enumerate(lengths):
        for t in range(n):
            future = math.fsum(float(rewards[b, k]) for k in range(t, n))
            assert float(advantages[b, t]) == pytest.approx(future - float(values[b, t]), abs=1e-10)
            assert float(returns[b, t]) == pytest.approx(future, abs=1e-10)


def test_gae_length_one_rows_are_reward_minus_value() -> None:
    mask = torch.tensor([[True, False, False], [True, False, False]])
    rewards = torch.tensor([[2.0, 9.0, 9.0], [-1.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 9.0, 9.0], [0.25, 9.0, 9.0]])
    advantages, returns = gae(rewards, values, mask, 0.9, 0.95)
    assert advantages.tolist() == [[1.5, 0.0, 0.0], [-1.25, 0.0, 0.0]]
    assert returns.tolist() == [[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]


def test_gae_carries_no_gradient() -> None:
    mask = torch.ones(2, 3, dtype=torch.bool)
    rewards = torch.randn(2, 3, requires_grad=True)
    values = torch.randn(2, 3, requires_grad=True)
    advantages, returns = gae(rewards, values, mask, 1.0, 0.95)
    assert not advantages.requires_grad and not returns.requires_grad


@pytest.mark.parametrize("name,gamma,lam", [("gamma", 1.5, 0.9), ("gamma", -0.1, 0.9), ("lam", 1.0, math.nan)])
def test_gae_rejects_bad_coefficients(name: str, gamma: float, lam: float) -> None:
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=name):
        gae(z, z, torch.ones(1, 2), gamma, lam)


def test_gae_rejects_left_padded_mask() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="right-padded"):
        gae(z, z, torch.tensor([[1, 1, 1], [0, 1, 1]]), 1.0, 0.95)


# --- importance weights ------------------------------------------------------------------------


@pytest.mark.parametrize("seed,batch,tokens", BATCHES)
@pytest.mark.parametrize("cap", [1.0, 2.0, 5.0], ids=["cap1", "cap2", "cap5"])
def test_truncated_importance_weights_match_loop(seed: int, batch: int, tokens: int, cap: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, batch, tokens)
    mask = mask_from_lengths(lengths, tokens)
    old = randn(gen, batch, tokens) - 3
    behaviour = old + randn(gen, batch, tokens, scale=0.8)

    weights, stats = truncated_importance_weights(with_garbage(old, mask), with_garbage(behaviour, mask), mask, cap)

    ratios = []
    for b, n in enumerate(lengths):
        for t in range(tokens):
            if t < n:
                ratio = math.exp(float(old[b, t]) - float(behaviour[b, t]))
                ratios.append(ratio)
                assert float(weights[b, t]) == pytest.approx(min(ratio, cap), rel=1e-12)
            else:
                assert float(weights[b, t]) == 0.0
    assert stats["is_weight_mean"] == pytest.approx(statistics.fmean(min(r, cap) for r in ratios), rel=1e-12)
    assert stats["is_weight_max"] == pytest.approx(max(ratios), rel=1e-12)
    assert stats["is_truncated_frac"] == pytest.approx(sum(r > cap for r in ratios) / len(ratios))


def test_importance_weights_cap_exactly_and_survive_huge_log_differences() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    old = torch.tensor([[0.0, -1.0, -0.5, 0.0, -2.0, 0.0]])
    behaviour = torch.tensor([[-1000.0, 1000.0, -0.5 - math.log(3.0), -math.inf, -2.0, math.nan]])
    for cap in (2.0, 3.0, 4.7):
        weights, stats = truncated_importance_weights(old, behaviour, mask, cap)
        assert bool(torch.isfinite(weights).all())
        cap32 = float(torch.tensor(cap, dtype=torch.float32))  # "exactly": the float32 nearest to cap
        assert float(weights[0, 0]) == cap32  # exp(1000) capped
        assert float(weights[0, 3]) == cap32  # behaviour prob 0: infinitely off-policy, capped
        assert float(weights.max()) == cap32
        assert float(weights[0, 1]) == 0.0  # exp(-1001) underflows to 0, not NaN
        assert float(weights[0, 4]) == 1.0
        assert float(weights[0, 5]) == 0.0
        assert float(weights[0, 2]) == pytest.approx(min(3.0, cap), rel=1e-6)
        assert stats["is_weight_max"] == math.inf  # the untruncated ratio, honestly
        assert stats["is_truncated_frac"] == pytest.approx((2 + (3.0 > cap + 1e-6)) / 5)
    assert not truncated_importance_weights(old.requires_grad_(), behaviour, mask, 2.0)[0].requires_grad


@pytest.mark.parametrize("cap", [0.99, 0.0, -2.0, math.nan], ids=["0.99", "0", "neg", "nan"])
def test_importance_weights_reject_cap_below_one(cap: float) -> None:
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=f"cap must be >= 1; got {cap}"):
        truncated_importance_weights(z, z, torch.ones(1, 2), cap)


# --- losses ------------------------------------------------------------------------------------


def reference_policy_loss(logp: float, old: float, adv: float, eps: float, w: float) -> tuple[float, bool]:
    ratio = math.exp(logp - old)
    unclipped = -adv * ratio
    clipped = -adv * min(max(ratio, 1 - eps), 1 + eps)
    return max(unclipped, clipped) * w, clipped > unclipped


@pytest.mark.parametrize("seed,batch,tokens", BATCHES)
@pytest.mark.parametrize("use_weights", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("clip_eps", [0.1, 0.2], ids=["eps0.1", "eps0.2"])
def test_clipped_policy_loss_matches_loop(
    seed: int, batch: int, tokens: int, use_weights: bool, clip_eps: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    old = randn(gen, batch, tokens) - 2
    logp = old + randn(gen, batch, tokens, scale=0.3)  # ratios on both sides of the clip range
    adv = randn(gen, batch, tokens)
    weights = torch.rand(batch, tokens, generator=gen, dtype=torch.float64) * 3 if use_weights else None

    loss, clipped = clipped_policy_loss(logp, old, adv, clip_eps, weights)

    n_clipped = 0
    for b in range(batch):
        for t in range(tokens):
            w = float(weights[b, t]) if weights is not None else 1.0
            ref_loss, ref_clipped = reference_policy_loss(
                float(logp[b, t]), float(old[b, t]), float(adv[b, t]), clip_eps, w
            )
            assert float(loss[b, t]) == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
            assert bool(clipped[b, t]) == ref_clipped
            n_clipped += ref_clipped
    assert 0 < n_clipped < batch * tokens  # both branches were exercised


def test_policy_loss_gradient_vanishes_where_the_clip_holds_the_ratio_back() -> None:
    eps = 0.2
    # ratio 1.5 with A > 0 and ratio 0.5 with A < 0: moving further out is what the clip forbids.
    # ratio 1.5 with A < 0 and ratio 0.5 with A > 0: the unclipped term is larger and pulls back in.
    # ratio 1.1 inside the range: the plain surrogate.
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1]
    advs = [1.0, -2.0, -1.0, 3.0, 0.7]
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5], dtype=torch.float64)
    old = torch.full((5,), -1.0, dtype=torch.float64)
    logp = (old + torch.tensor(ratios, dtype=torch.float64).log()).requires_grad_()
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor(advs, dtype=torch.float64), eps, weights)
    loss.sum().backward()
    assert clipped.tolist() == [True, True, False, False, False]
    assert logp.grad is not None
    # d/dlogp of -A * exp(logp - old) * w is -A * r * w where unclipped, 0 where clipped.
    expected = [
        0.0 if c else -a * r * w for c, a, r, w in zip(clipped.tolist(), advs, ratios, weights.tolist(), strict=True)
    ]
    assert logp.grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_policy_loss_weights_get_no_gradient() -> None:
    weights = torch.full((1, 2), 2.0, requires_grad=True)
    loss, _ = clipped_policy_loss(
        torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 2), torch.ones(1, 2), 0.2, weights
    )
    loss.sum().backward()
    assert weights.grad is None


def reference_value_loss(v: float, v_old: float, g: float, eps: float) -> tuple[float, bool]:
    v_clipped = min(max(v, v_old - eps), v_old + eps)
    unclipped, clipped = (v - g) ** 2, (v_clipped - g) ** 2
    return 0.5 * max(unclipped, clipped), clipped > unclipped


@pytest.mark.parametrize("seed,batch,tokens", BATCHES)
def test_clipped_value_loss_matches_loop(seed: int, batch: int, tokens: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    old = randn(gen, batch, tokens)
    values = (old + randn(gen, batch, tokens, scale=0.4)).requires_grad_()
    returns = randn(gen, batch, tokens)
    eps = 0.2

    loss, clipped = clipped_value_loss(values, old, returns, eps)
    (grad,) = torch.autograd.grad(loss.sum(), values)
    loss, values = loss.detach(), values.detach()

    n_clipped = 0
    for b in range(batch):
        for t in range(tokens):
            v, v_old, g = float(values[b, t]), float(old[b, t]), float(returns[b, t])
            ref_loss, ref_clipped = reference_value_loss(v, v_old, g, eps)
            assert float(loss[b, t]) == pytest.approx(ref_loss, rel=1e-12, abs=1e-15)
            assert bool(clipped[b, t]) == ref_clipped
            # The clipped term is constant in V once V is outside the band; otherwise d/dV = V - G.
            assert float(grad[b, t]) == pytest.approx(0.0 if ref_clipped else v - g, abs=1e-12)
            n_clipped += ref_clipped
    assert 0 < n_clipped < batch * tokens


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda z, e: clipped_policy_loss(z, z, z, e), id="policy"),
        pytest.param(lambda z, e: clipped_value_loss(z, z, z, e), id="value"),
    ],
)
@pytest.mark.parametrize("eps", [0.0, -0.1, math.nan], ids=["0", "neg", "nan"])
def test_losses_reject_non_positive_clip_eps(call: Callable[[torch.Tensor, float], object], eps: float) -> None:
    with pytest.raises(ValueError, match=f"clip_eps must be > 0; got {eps}"):
        call(torch.zeros(1, 2), eps)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(2, 5\) but logprobs has shape \(2, 4\)"):
        clipped_policy_loss(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(2, 4), 0.2)
    with pytest.raises(ValueError, match=r"weights has shape \(2,\) but logprobs has shape \(2, 4\)"):
        clipped_policy_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), 0.2, torch.ones(2))
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\) but x has shape \(2, 4\)"):
        masked_mean(torch.zeros(2, 4), torch.ones(3, 4))


# --- KL estimators and scores ------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.01, 1.0, 5.0], ids=["close", "moderate", "far"])
def test_k3_and_approx_kl_match_loops(scale: float) -> None:
    gen = torch.Generator().manual_seed(21)
    logp = randn(gen, 6, 9) - 2
    ref = logp + randn(gen, 6, 9, scale=scale)
    k3 = k3_kl(logp, ref)
    ak = approx_kl(logp, ref)
    assert bool((k3 >= 0).all())
    for b in range(6):
        for t in range(9):
            x = float(ref[b, t]) - float(logp[b, t])
            assert float(k3[b, t]) == pytest.approx((math.exp(x) - 1) - x, rel=1e-6, abs=1e-15)
            assert float(ak[b, t]) == pytest.approx(0.5 * x * x, rel=1e-12)


def test_k3_is_non_negative_on_float32_noise() -> None:
    gen = torch.Generator().manual_seed(22)
    logp = torch.randn(1000, generator=gen)
    tiny = logp + torch.randn(1000, generator=gen) * 1e-7  # where rounding could go below 0
    assert float(k3_kl(logp, tiny).min()) >= 0.0
    assert float(k3_kl(logp, logp).abs().max()) == 0.0


@pytest.mark.parametrize("spread", [0.05, 0.2], ids=["very-close", "close"])
def test_k3_and_approx_kl_estimate_the_true_kl_of_close_distributions(spread: float) -> None:
    gen = torch.Generator().manual_seed(23)
    vocab = 40
    logp = torch.log_softmax(randn(gen, vocab), dim=-1)  # the policy pi
    logq = torch.log_softmax(logp + randn(gen, vocab, scale=spread), dim=-1)  # the reference
    p = [math.exp(v) for v in logp.tolist()]
    true_kl = math.fsum(pi * (a - b) for pi, a, b in zip(p, logp.tolist(), logq.tolist(), strict=True))
    # Averaged over tokens drawn from pi, k3 is unbiased: its exact expectation is KL(pi || ref).
    e_k3 = math.fsum(pi * k for pi, k in zip(p, k3_kl(logp, logq).tolist(), strict=True))
    assert e_k3 == pytest.approx(true_kl, rel=1e-9)
    # approx_kl agrees to second order for close distributions.
    e_ak = math.fsum(pi * k for pi, k in zip(p, approx_kl(logp, logq).tolist(), strict=True))
    assert e_ak == pytest.approx(true_kl, rel=3 * spread)
    # And so does a Monte Carlo average of k3 over sampled tokens.
    samples = torch.multinomial(logp.exp(), 20000, replacement=True, generator=gen)
    mc = float(k3_kl(logp[samples], logq[samples]).mean())
    assert mc == pytest.approx(true_kl, rel=0.1)


def test_clip_scores() -> None:
    scores = torch.tensor([-5.0, -1.0, 0.0, 0.5, 3.0, math.inf])
    assert clip_scores(scores, 2.0).tolist() == [min(max(s, -2.0), 2.0) for s in scores.tolist()]
    assert clip_scores(scores, None) is scores
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="bound"):
            clip_scores(scores, bad)


# --- KL controllers ----------------------------------------------------------------------------


def test_fixed_controller_ignores_updates_and_round_trips() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 512)
    ctl.update(-3.0, 512)
    assert ctl.value == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    assert restored == ctl
    with pytest.raises(ValueError, match="unknown fields"):
        restored.load_state_dict({"value": 0.1, "target": 6.0})
    with pytest.raises(ValueError, match=">= 0"):
        FixedKLController(-0.1)


def reference_adaptive(value: float, target: float, horizon: int, kl: float, n: int) -> float:
    error = kl / target - 1
    if error > 0.2:
        error = 0.2
    if error < -0.2:
        error = -0.2
    return value * (1 + error * n / horizon)


@pytest.mark.parametrize(
    "kl,direction",
    [
        pytest.param(12.0, 1, id="far-above-clipped"),
        pytest.param(6.6, 1, id="just-above"),
        pytest.param(6.0, 0, id="on-target"),
        pytest.param(5.0, -1, id="just-below"),
        pytest.param(-1.0, -1, id="negative-kl-clipped"),
    ],
)
def test_adaptive_controller_moves_toward_target(kl: float, direction: int) -> None:
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(kl, 256)
    assert ctl.value == pytest.approx(reference_adaptive(0.1, 6.0, 10000, kl, 256), rel=1e-15)
    assert (ctl.value > 0.1) - (ctl.value < 0.1) == direction


def test_adaptive_controller_sequence_and_round_trip() -> None:
    ctl = AdaptiveKLController(value=0.2, target=4.0, horizon=2000)
    expected = 0.2
    for kl in [9.0, 8.0, 4.5, 3.0, 0.5, 4.0, 100.0]:
        ctl.update(kl, 64)
        expected = reference_adaptive(expected, 4.0, 2000, kl, 64)
    assert ctl.value == pytest.approx(expected, rel=1e-14)

    state = json.loads(json.dumps(ctl.state_dict()))
    assert state == {"value": ctl.value, "target": 4.0, "horizon": 2000}
    restored = AdaptiveKLController(value=1.0, target=1.0, horizon=1)
    restored.load_state_dict(state)
    assert restored == ctl
    restored.update(9.0, 64)
    ctl.update(9.0, 64)
    assert restored.value == ctl.value


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param(
            {"value": 0.1, "target": 0.0, "horizon": 10}, "target must be finite and > 0; got 0.0", id="target-0"
        ),
        pytest.param(
            {"value": 0.1, "target": -1.0, "horizon": 10}, "target must be finite and > 0; got -1.0", id="target-neg"
        ),
        pytest.param(
            {"value": 0.1, "target": 6.0, "horizon": 0}, "horizon must be an integer > 0; got 0", id="horizon-0"
        ),
        pytest.param(
            {"value": 0.1, "target": 6.0, "horizon": -5}, "horizon must be an integer > 0; got -5", id="horizon-neg"
        ),
        pytest.param(
            {"value": 0.0, "target": 6.0, "horizon": 10}, "value must be finite and > 0; got 0.0", id="value-0"
        ),
    ],
)
def test_adaptive_controller_rejects_bad_config(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(**kwargs)


def test_adaptive_controller_rejects_bad_updates_and_states() -> None:
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=100)
    with pytest.raises(ValueError, match="current_kl must be finite; got nan"):
        ctl.update(math.nan, 10)
    with pytest.raises(ValueError, match=r"n_steps must be in .*\[0, 500\); got 500"):
        ctl.update(0.0, 500)  # the multiplier would be 1 - 0.2 * 5 = 0
    assert ctl.value == 0.1
    with pytest.raises(ValueError, match="lacks fields"):
        ctl.load_state_dict({"value": 0.1, "target": 6.0})
    with pytest.raises(ValueError, match="horizon"):
        ctl.load_state_dict({"value": 0.1, "target": 6.0, "horizon": 10.5})
    with pytest.raises(ValueError, match="target"):
        ctl.load_state_dict({"value": 0.1, "target": -6.0, "horizon": 10})
    assert ctl.state_dict() == {"value": 0.1, "target": 6.0, "horizon": 100}  # a failed load changes nothing


def test_standardize_scores() -> None:
    scores = torch.tensor([0.47, 0.49, 0.52, 0.44], dtype=torch.float64)
    out = standardize_scores(scores)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(out.std()) == pytest.approx(1.0)
    assert torch.argsort(out).tolist() == torch.argsort(scores).tolist()  # order kept
    torch.testing.assert_close(out, (scores - scores.mean()) / scores.std())
    assert standardize_scores(torch.tensor([0.3, 0.3])).tolist() == [0.0, 0.0]  # no spread: centred only
    assert standardize_scores(torch.tensor([0.7])).tolist() == [0.0]
