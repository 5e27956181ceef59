"""The metrics stage 2 of a PPO iteration (``PPOTrainer.advantages``) records for its rollout.

Kept apart from ``ppo`` so the trainer reads as its stages; every value here is a plain float for
``metrics.jsonl``.
"""

from __future__ import annotations

import torch

from npcrl.train.ppo_math import k3_kl, masked_mean, masked_sum
from npcrl.train.rollout import Rollout


def sequence_log_weights(rollout: Rollout) -> list[float]:
    """Each turn's summed log pi_old - log pi_ref over its response tokens: the log of how much more
    (or less) likely training has made the whole line."""
    gap = rollout.old_logprobs - rollout.ref_logprobs
    return [float(x) for x in masked_sum(gap, rollout.batch.mask, dim=1)]


def advantage_stats(rollout: Rollout, clipped_scores: torch.Tensor, kl_coef: float) -> dict[str, float]:
    """The rollout's rewards, KL, values and returns, and how far pi_old is from mu and pi_b."""
    mask, returns = rollout.batch.mask, rollout.returns
    assert returns is not None, "advantage_stats reads the returns GAE set"
    logged_kl = masked_sum(rollout.old_logprobs - rollout.ref_logprobs, mask, dim=1).mean()
    residual = masked_mean((returns - rollout.values) ** 2, mask)
    variance = torch.var(returns[mask.bool()]) if int(mask.sum()) > 1 else torch.tensor(0.0)
    return {
        "reward_mean": float(rollout.batch.scores.mean()),
        "reward_clipped_mean": float(clipped_scores.mean()),
        "kl_coef": kl_coef,
        # the exact KL(pi_old || reference) summed over each turn's response, averaged over the turns
        "kl_per_turn": float(masked_sum(rollout.kl, mask, dim=1).mean()),
        "kl_logged_tokens_per_turn": float(logged_kl),
        "kl_k3_per_token": float(masked_mean(k3_kl(rollout.old_logprobs, rollout.ref_logprobs), mask)),
        "response_length_mean": float(mask.sum(dim=1).mean()),
        "value_mean": float(masked_mean(rollout.values, mask)),
        "return_mean": float(masked_mean(returns, mask)),
        "explained_variance": float(1.0 - residual / variance) if float(variance) > 0 else 0.0,
        # |pi_old - mu|: what the importance weights correct (sampler truncation, penalty, quantisation)
        "behaviour_logprob_gap": float(
            masked_mean((rollout.old_logprobs - rollout.batch.behaviour_logprobs).abs(), mask)
        ),
        # |pi_old - pi_b|: the logging bundle's own softmax; ~0 at iteration 1 for an fp32 bundle, the
        # quantisation error for q8/q4, large if prompts/tokens were misaligned
        "logged_full_logprob_gap": float(
            masked_mean((rollout.old_logprobs - rollout.batch.logged_full_logprobs).abs(), mask)
        ),
    }
