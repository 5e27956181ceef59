"""PPO math for training on play logs: small pure functions over ``[B, T]`` token tensors.

``B`` is the batch of NPC responses, ``T`` the response tokens. A ``mask`` ``[B, T]`` (bool, or a
0/1 float tensor) marks the real response tokens; masks are right-padded, so a row's valid tokens
are a prefix. The definitions are those of docs/TRAINING.md (Ziegler et al. 2019 KL penalty,
GAE, PPO clipping, truncated importance weights for the logged behaviour policy); the KL
coefficient's controllers are in ``kl_control``.

Padding may hold anything (the logs store no log-prob for a pad token, a model's value there is
meaningless): every function that takes a mask selects with ``torch.where`` before any arithmetic,
so a NaN or inf in the padding reaches neither the result nor the gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "approx_kl",
    "clip_scores",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "gae",
    "k3_kl",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "selective_log_softmax",
    "truncated_importance_weights",
]


# --- argument checks ---------------------------------------------------------------------------


def _check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError naming both shapes when the tensors' shapes differ.

    Broadcasting is never wanted here: a ``[B]`` tensor against a ``[B, T]`` one is a caller bug
    that broadcasting would turn into silently wrong numbers.
    """
    items = list(tensors.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tensor.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but {first_name} has shape {tuple(first.shape)}; they must match"
            )


def _bool_mask(mask: Tensor) -> Tensor:
    """The mask as bool; a non-bool mask must hold only 0 and 1.

    The check catches an additive attention mask (0 / -inf), which ``mask != 0`` would silently invert.
    """
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask of dtype {mask.dtype} must hold only 0 and 1 (1 = real response token)")
    return mask != 0


def _check_2d(mask: Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T]; got shape {tuple(mask.shape)}")


def _check_right_padded(mask: Tensor) -> None:
    """Raise unless each row's valid tokens are a prefix (``mask`` already bool, ``[B, T]``).

    A left-padded mask (what ``generate`` gives for prompts) would put the terminal and the score
    on the wrong token without any error downstream.
    """
    gaps = mask[:, 1:] & ~mask[:, :-1]  # (B, T-1): a valid token right after a padding one
    if bool(gaps.any()):
        row = int(gaps.any(dim=1).nonzero()[0, 0])
        raise ValueError(f"mask row {row} is not right-padded: its valid tokens must be a prefix of the row")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # written this way so NaN fails too
        raise ValueError(f"{name} must be in [0, 1]; got {value}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:  # written this way so NaN fails too
        raise ValueError(f"{name} must be > 0; got {value}")


# --- masked reductions -------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is set, over all elements or along ``dim``."""
    _check_same_shape(x=x, mask=mask)
    selected = torch.where(_bool_mask(mask), x, 0)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set, over all elements or along ``dim``.

    With ``dim=None`` an empty mask raises ValueError: a loss averaged over no tokens is a caller
    bug, not 0. Along a ``dim``, an empty slice gives 0 rather than NaN, so one empty row cannot
    turn a whole batch statistic into NaN.
    """
    _check_same_shape(x=x, mask=mask)
    m = _bool_mask(mask)
    total = masked_sum(x, m, dim)
    count = m.sum() if dim is None else m.sum(dim=dim)
    if dim is None:
        if int(count) == 0:
            raise ValueError("masked_mean: the mask selects no element")
        return total / count
    return total / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all positions where ``mask`` is set.

    ``unbiased`` divides by ``n - 1`` (Bessel's correction) and needs at least 2 elements;
    otherwise divides by ``n``.
    """
    _check_same_shape(x=x, mask=mask)
    m = _bool_mask(mask)
    n = int(m.sum())
    if n == 0:
        raise ValueError("masked_var: the mask selects no element")
    if unbiased and n < 2:
        raise ValueError("masked_var: the unbiased variance needs at least 2 masked elements; the mask selects 1")
    x = torch.where(m, x, 0)
    centred = torch.where(m, x - masked_mean(x, m), 0)
    return centred.square().sum() / (n - 1 if unbiased else n)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the masked mean and unbiased variance; padding set to 0.

    ``shift_mean=False`` adds the mean back, rescaling only (as TRL does for rewards, whose sign
    carries meaning). Needs at least 2 masked elements (the variance of one is undefined).
    """
    _check_same_shape(x=x, mask=mask)
    m = _bool_mask(mask)
    x = torch.where(m, x, 0)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, 0)


# --- log-probabilities and entropy -------------------------------------------------------------


def selective_log_softmax(logits: Tensor, ids: Tensor) -> Tensor:
    """``log_softmax(logits)`` at ``ids``: logits ``[..., V]``, ids ``[...]`` -> ``[...]``.

    Gathers the chosen logit and subtracts ``logsumexp``, one leading row at a time, so the full
    ``[..., V]`` log-softmax is never materialised (with a 50k vocabulary it dwarfs the model's
    activations). Half-precision logits are reduced in float32 and the result is float32: bf16
    log-probs are too coarse for PPO ratios (a 1-ulp error at -10 is a ratio off by ~6%).
    """
    if logits.dim() < 1 or logits.shape[:-1] != ids.shape:
        raise ValueError(
            f"logits has shape {tuple(logits.shape)} and ids has shape {tuple(ids.shape)}; ids must be logits' shape without the last (vocabulary) dimension"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor; got dtype {ids.dtype}")
    vocab = logits.shape[-1]
    ids = ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        # On a GPU gather with a bad index is an asynchronous device assert; say which ids are wrong instead.
        raise ValueError(
            f"ids must be in [0, {vocab}) (the logits' vocabulary); got min {int(ids.min())}, max {int(ids.max())}"
        )
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(out_dtype)  # (...)
    if logits.dim() == 1 or logits.shape[0] == 0:
        lse = torch.logsumexp(logits.to(out_dtype), dim=-1)
    else:
        lse = torch.stack([torch.logsumexp(row.to(out_dtype), dim=-1) for row in logits])  # (...)
    return picked - lse


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of ``softmax(logits)``: ``[..., V]`` -> ``[...]``.

    Logits of ``-inf`` (top-k/top-p filtered tokens) contribute 0, value and gradient: the naive
    ``p * logp`` would be ``0 * -inf = NaN`` there. Half-precision logits are reduced in float32.
    """
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    # Replace -inf by 0 before multiplying, so neither the product nor its gradient sees 0 * inf.
    finite_logp = torch.where(torch.isneginf(logp), 0, logp)
    return -(logp.exp() * finite_logp).sum(dim=-1)


# --- rewards and advantages --------------------------------------------------------------------


def last_token_index(mask: Tensor) -> Tensor:
    """Index ``[B]`` (int64) of each row's last valid token in a right-padded ``[B, T]`` mask.

    A row with no valid token raises ValueError: it has no token to carry the turn's reward.
    """
    _check_2d(mask)
    m = _bool_mask(mask)
    _check_right_padded(m)
    lengths = m.sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):
        rows = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(f"mask rows {rows} have no valid token")
    return lengths - 1


def kl_penalty_rewards(kl: Tensor, scores: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards ``[B, T]``: ``-kl_coef * kl`` plus each row's score on its last valid token.

    ``kl`` is any per-state KL ``[B, T]``; the offline trainer passes the exact KL(pi_old || pi_ref)
    over the vocabulary at each logged state, because logged tokens come from mu, not pi_old.
    """
    _check_2d(mask)
    _check_same_shape(mask=mask, kl=kl)
    if scores.shape != mask.shape[:1]:
        raise ValueError(
            f"scores has shape {tuple(scores.shape)} but mask has shape {tuple(mask.shape)}; scores must be [B]"
        )
    if not (kl_coef >= 0 and math.isfinite(kl_coef)):
        raise ValueError(f"kl_coef must be finite and >= 0; got {kl_coef}")
    m = _bool_mask(mask)
    last = last_token_index(m)  # (B,)
    rewards = -kl_coef * torch.where(m, kl, 0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    # Out-of-place index_put: the caller's tensors and any autograd history stay intact.
    return rewards.index_put((rows, last), scores.to(rewards.dtype), accumulate=True)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's tokens: ``(advantages, returns)``, both ``[B, T]``.

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, returns ``A_t + V_t``.
    The value after a row's last valid token is 0 (the turn ends there); padding is 0 in both
    outputs. Computed without gradient: advantages and returns are targets, not functions of θ.
    """
    _check_2d(mask)
    _check_same_shape(mask=mask, rewards=rewards, values=values)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    m = _bool_mask(mask)
    _check_right_padded(m)
    with torch.no_grad():
        # Zero padding first: then V_{t+1} past the last valid token is 0 and the recursion
        # carries exactly 0 through the padding, with no per-row length bookkeeping.
        r = torch.where(m, rewards, 0)
        v = torch.where(m, values, 0)
        n_tokens = r.shape[1]
        advantages = torch.zeros_like(r)
        running = torch.zeros_like(r[:, 0])  # (B,)
        for t in reversed(range(n_tokens)):
            next_v = v[:, t + 1] if t + 1 < n_tokens else torch.zeros_like(running)
            delta = r[:, t] + gamma * next_v - v[:, t]
            running = delta + gamma * lam * running
            advantages[:, t] = running
        advantages = torch.where(m, advantages, 0)
        returns = torch.where(m, advantages + v, 0)
    return advantages, returns


# --- off-policy correction and losses ----------------------------------------------------------


def truncated_importance_weights(
    old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance weights ``w = min(pi_old / mu, cap)`` per token, and their statistics.

    ``mu`` is the logged behaviour probability (the quantised, truncated sampler's). The ratio is
    capped in log space, so a huge log difference gives ``cap`` instead of inf; a capped weight is
    exactly ``cap`` (as the weights' dtype holds it). Padding is 0. The weights are constants of the loss, so they carry no gradient.

    Stats over the masked tokens: ``is_weight_mean`` (of the capped weights), ``is_weight_max`` (of
    the *uncapped* ratio, computed in float64; inf when a log-ratio exceeds ~709) and
    ``is_truncated_frac`` (the fraction of tokens whose ratio was above ``cap``).
    """
    _check_same_shape(mask=mask, old_logprobs=old_logprobs, behaviour_logprobs=behaviour_logprobs)
    if not cap >= 1:  # written this way so NaN fails too
        raise ValueError(f"cap must be >= 1; got {cap}")
    m = _bool_mask(mask)
    if not bool(m.any()):
        raise ValueError(
            "truncated_importance_weights: the mask selects no token, so there are no statistics to report"
        )
    with torch.no_grad():
        log_ratio = torch.where(m, old_logprobs - behaviour_logprobs, 0)
        log_cap = math.log(cap)
        truncated = m & (log_ratio > log_cap)
        # exp(log(cap)) can land an ulp either side of cap: clamp the exponent, clamp again, and
        # put cap itself where the ratio was truncated.
        uncapped_part = torch.exp(log_ratio.clamp(max=log_cap)).clamp(max=cap)
        weights = torch.where(truncated, torch.full_like(log_ratio, cap), uncapped_part)
        weights = torch.where(m, weights, 0)
        max_log_ratio = log_ratio.masked_fill(~m, -math.inf).max().double()
        stats = {
            "is_weight_mean": float(masked_mean(weights.double(), m)),
            "is_weight_max": float(max_log_ratio.exp()),
            "is_truncated_frac": float(masked_mean(truncated.double(), m)),
        }
    return weights, stats


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_eps: float, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate per token ``[B, T]``, and where the clip was active ``[B, T]`` (bool).

    ``loss = max(-A r, -A clip(r, 1 - eps, 1 + eps)) * w`` with ``r = exp(logprobs - old_logprobs)``
    and ``w`` the per-token weights (default 1; detached: they scale the loss, they are not
    trained). ``clipped`` is where the clipped term is strictly larger, i.e. where the token gives
    no gradient. No masking here: the caller reduces with ``masked_mean``. Padding must still be
    finite in every input (``gae`` and ``truncated_importance_weights`` give 0 there), because a
    NaN there becomes a NaN gradient even after the mask drops its value.
    """
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    if weights is not None:
        _check_same_shape(logprobs=logprobs, weights=weights)
    _check_positive("clip_eps", clip_eps)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped_term = -advantages * ratio
    clipped_term = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = torch.maximum(unclipped_term, clipped_term)
    if weights is not None:
        loss = loss * weights.detach()
    return loss, clipped_term > unclipped_term


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_eps: float) -> tuple[Tensor, Tensor]:
    """Clipped value loss per token ``[B, T]``, and where the clipped term was larger ``[B, T]`` (bool).

    ``0.5 * max((V - G)^2, (clip(V, V_old - eps, V_old + eps) - G)^2)``: the value head may not move
    more than ``eps`` from its old prediction in a direction that the unclipped loss would reward.
    No masking here, as for the policy loss.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns)
    _check_positive("clip_eps", clip_eps)
    values_clipped = torch.clamp(values, min=old_values - clip_eps, max=old_values + clip_eps)
    unclipped_sq = (values - returns).square()
    clipped_sq = (values_clipped - returns).square()
    return 0.5 * torch.maximum(unclipped_sq, clipped_sq), clipped_sq > unclipped_sq


# --- KL estimators and scores ------------------------------------------------------------------


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """The k3 estimator of KL(pi || ref) per token: ``(rho - 1) - log rho``, ``rho = exp(ref - logprobs)``.

    Unbiased for tokens sampled from pi, and never negative (``e^x - 1 >= x``). ``expm1`` keeps
    precision for close distributions, where ``exp(x) - 1`` would cancel; the clamp removes a
    possible last-ulp negative.
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_rho = ref_logprobs - logprobs
    return (torch.expm1(log_rho) - log_rho).clamp(min=0)


def approx_kl(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """``0.5 * (logprobs - old_logprobs)^2`` per token: the low-variance KL estimate PPO uses to stop early."""
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs)
    return 0.5 * (logprobs - old_logprobs).square()


def clip_scores(scores: Tensor, bound: float | None) -> Tensor:
    """Clamp turn scores to ``[-bound, bound]``; ``bound=None`` returns ``scores`` unchanged."""
    if bound is None:
        return scores
    _check_positive("bound", bound)
    return scores.clamp(-bound, bound)


def standardize_scores(scores: Tensor) -> Tensor:
    """Turn scores shifted to mean 0 and scaled to standard deviation 1 over the rollout.

    A reward model's predictions can spread by a few hundredths while the per-token KL penalty and
    the value head's errors are ~0.1 per line: standardising gives the reward its own unit scale
    beside them. One score (or equal scores) has no spread: those are only centred.
    """
    centred = scores - scores.mean()
    if scores.numel() < 2:
        return centred
    std = float(scores.std())
    return centred / std if std > 1e-12 else centred
