"""What a training run is judged by before anyone plays it: an off-policy estimate of the new
policy's engagement on held-out logs, and sample lines before/after for the same prompts.

The off-policy estimate targets the new model *as it would be deployed*: with each turn's logged
sampler settings (temperature, top-k/top-p, repetition penalty), recomputed in torch by
``npcrl.train.behaviour.sampler_logprobs``. Per-turn weight ``W = exp(sum_t log mu_new - log mu)``.
Two estimators are reported: importance-sampled ``sum(W R) / n`` (unbiased, high variance) and
self-normalised ``sum(W R) / sum(W)``; with the effective sample size ``sum(W)^2 / sum(W^2)``,
because when a few turns carry nearly all the weight either number describes those turns only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from npcrl.runtime.sampler import SamplerConfig
from npcrl.train.batching import collate
from npcrl.train.behaviour import sampler_logprobs
from npcrl.train.data import TrainingTurn
from npcrl.train.onpolicy import RewardScorer
from npcrl.train.policy import Policy
from npcrl.train.shared_prefix import group_by_prefix

# Below this effective sample size the estimate is reported but flagged as not to be trusted.
MIN_TRUSTED_ESS = 10.0


@dataclass
class OffPolicyEstimate:
    turns: int
    logged_mean_reward: float
    """the behaviour policy's on-policy mean: what the logs actually got"""
    importance_sampled: float
    """sum(W R) / n: unbiased, high variance"""
    self_normalised: float
    """sum(W R) / sum(W): biased, lower variance; the number to compare"""
    effective_sample_size: float
    zero_weight_fraction: float
    """turns the new policy could not have produced (a token outside its top-p/top-k set)"""
    log_weight_clip: float
    trusted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def turn_log_weights(
    policy: Policy, turns: list[TrainingTurn], pad_id: int, reference: bool = False, batch_turns: int = 4
) -> list[float]:
    """Per turn ``sum_t log mu_new(a_t) - log mu(a_t)`` (``-inf`` when mu_new gives a token zero mass).

    Turns sharing a persona prefix are scored ``batch_turns`` at a time (the prefix runs once)."""
    out = [0.0] * len(turns)
    prompts = [t.prompt_ids for t in turns]
    for chunk in group_by_prefix(range(len(turns)), prompts, batch_turns):
        logits = policy.full_logits(collate([turns[i] for i in chunk], pad_id), reference=reference)
        for row, i in enumerate(chunk):
            turn = turns[i]
            new = sampler_logprobs(
                logits[row, : len(turn.response_ids)],
                turn.prompt_ids,
                turn.response_ids,
                SamplerConfig.from_dict(turn.sampler),
            )
            behaviour = torch.tensor(turn.behaviour_logprobs, dtype=torch.float64)
            out[i] = float((new - behaviour).sum())
    return out


def off_policy_estimate(log_weights: list[float], rewards: list[float], log_weight_clip: float) -> OffPolicyEstimate:
    if not log_weights or len(log_weights) != len(rewards):
        raise ValueError(f"need matching non-empty weights and rewards, got {len(log_weights)} and {len(rewards)}")
    weights = [
        0.0 if lw == -math.inf else math.exp(min(max(lw, -log_weight_clip), log_weight_clip)) for lw in log_weights
    ]
    n = len(weights)
    total = sum(weights)
    weighted = sum(w * r for w, r in zip(weights, rewards, strict=True))
    squares = sum(w * w for w in weights)
    ess = total * total / squares if squares > 0 else 0.0
    return OffPolicyEstimate(
        turns=n,
        logged_mean_reward=sum(rewards) / n,
        importance_sampled=weighted / n,
        self_normalised=weighted / total if total > 0 else float("nan"),
        effective_sample_size=ess,
        zero_weight_fraction=sum(1 for w in weights if w == 0.0) / n,
        log_weight_clip=log_weight_clip,
        trusted=ess >= MIN_TRUSTED_ESS,
    )


def evaluate_holdout(
    policy: Policy, holdout: list[TrainingTurn], pad_id: int, log_weight_clip: float
) -> dict[str, Any]:
    """The estimate for the trained policy and, as a control, for the reference it started from."""
    if not holdout:
        return {"note": "no holdout turns (data.holdout_fraction is 0 or there was one conversation)"}
    rewards = [t.reward for t in holdout]
    result: dict[str, Any] = {}
    for name, reference in (("reference", True), ("trained", False)):
        weights = turn_log_weights(policy, holdout, pad_id, reference=reference)
        result[name] = off_policy_estimate(weights, rewards, log_weight_clip).to_dict()
    return result


def sample_lines(
    policy: Policy,
    holdout: list[TrainingTurn],
    count: int,
    max_new_tokens: int,
    seed: int,
    reference: bool,
    judge: RewardScorer | None = None,
) -> list[dict[str, Any]]:
    """Responses to the first turn of up to ``count`` holdout conversations (same seeds before/after).

    With a ``judge`` (a reward model), each sample also carries its predicted reward.
    """
    firsts: dict[str, TrainingTurn] = {}
    for turn in holdout:
        if not turn.rejected_sample:  # a line a player saw, not one the agent rejected
            firsts.setdefault(turn.conversation_id, turn)
    out = []
    for k, turn in enumerate(list(firsts.values())[:count]):
        sampler = SamplerConfig.from_dict(turn.sampler)
        ids = policy.generate(list(turn.prompt_ids), sampler, max_new_tokens, seed + k, reference=reference)
        out.append(
            {
                "conversation_id": turn.conversation_id,
                "turn_index": turn.turn_index,
                "npc_id": turn.npc_id,
                "prompt_tail": policy.tokenizer.decode(list(turn.prompt_ids[-48:]), skip_special_tokens=False),
                "logged": policy.tokenizer.decode(list(turn.response_ids), skip_special_tokens=True),
                "logged_reward": turn.reward,
                "text": policy.tokenizer.decode(ids, skip_special_tokens=True),
                "tokens": len(ids),
            }
        )
        if judge is not None:
            out[-1]["reward_model_score"] = judge.predict_sequences([turn.prompt_ids], [ids])[0]
    return out
