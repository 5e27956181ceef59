"""How hard a sample rejected for contradicting the persona card is penalised, and how often the
policy being trained would contradict the card (``[contradiction]``, npcrl.train.config_contradiction).

The guard is a constraint, "training never raises the share of lines that contradict the card", and
a fixed penalty is a price: too low and the share rises, too high and the update gives up engagement
to push it far below the guard. ``penalty = "adaptive"`` treats the penalty's weight as the Lagrange
multiplier of that constraint, as constrained PPO does (PPO-Lagrangian, Ray et al. 2019): it rises
while the policy's estimated share is above the logged policy's, and falls only while the
estimate's upper bound is below it.

The share is estimated off-policy from each logged turn's *first* draw (``TrainingTurn.first_draw``):
the line shown when the agent did not draw again, or the turn's first rejected sample. A first draw
is an unconditional sample of the logged policy, so with ``c`` = 1 for a rejected sample, a weighted
share ``sum w c / sum w`` over first draws estimates the share under the logged policy tilted by
``w``. The weight is what training changed::

    w = exp(clip(sum over the line's tokens of log pi(t) - log pi_ref(t)))

``pi`` is the policy as scored this iteration, ``pi_ref`` the reference it started from, both at the
logged temperature in the same numerics. At the first iteration every weight is exactly 1. Weighing
by ``pi / pi_b`` instead (``pi_b`` the logging bundle's own softmax, logged beside each token) would
carry the bundle's quantisation error and the selection of the tokens it sampled, which training
did not do (with them, on the default population's play and the q8 bundle, the second iteration's
estimate stood 41% above the target at a KL of 0.024 nats). The game samples the trained policy through the same truncation
(top-p, top-k) as the logged one, so the truncation stays out of the weight too, up to the ratio of
the mass each keeps, near 1 while the policy stays near the reference (the KL stop). A rejected
sample ended at its contradiction carries the weight of that prefix, which decides ``c``: the
estimate is unchanged in expectation.

A rollout holds about one rejected sample per 16 turns, so the sums are running ones, each
iteration keeping ``estimate_decay`` of the last. Even so, which first draws the last rollouts
happened to hold moves a weighted share more than the policy does (on the default population's play
the plain weighted share went from 0.033 to 0.068 within three iterations, at a KL of 0.03 nats, and
the multiplier climbed to 1.9 on that alone). So the estimate is a ratio with a control variate: the
weighted share over the unweighted share of the *same* draws, times the share over all training
first draws (the target)::

    estimate = target * (sum w c / sum w) / (sum c / n)

While the policy is the reference the estimate is the target whichever draws were read; it moves
only as the policy weighs contradicting first draws differently from the others. The sums start as
if the reference itself had been seen, with as much weight as they hold once running.
Each iteration the multiplier rises by ``step * min(estimate / target - 1, 1)`` while the estimate is
above the target. It falls only on evidence: by ``step * max(bound / target - 1, -1)`` while the
estimate's one-sided upper bound at ``release_confidence`` is below the target, and holds otherwise;
it is kept in ``[0, max_multiplier]``. The bound is Wilson's score bound on the weighted share with
Kish's effective sample size as its count, through the same control variate. The asymmetry is the
constraint's: on the default population's play, a multiplier moved by the estimate alone fell to 0
at a KL of 1.1 nats per line, when the weights had left an effective sample of about 20 first
draws, and the estimate went on falling (0.013 against a target of 0.035, at 10) while the trained
policy's played share rose from 0.048 to 0.081 per line. Far from the logged policy its logs cannot
show that a share went down, and the bound says so (0.28 at the end).

A rejected sample's reward ``r`` becomes ``m + multiplier * (r - m)``, ``m`` the mean reward of the
shown training turns. A multiplier of 1 is the spec's penalty as it is; 0 makes a rejected sample
worth an average line. ``penalty = "fixed"`` keeps the multiplier at 1 and still reports the
estimate and its bound, so every run shows how its policy's contradiction share moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch

from npcrl.errors import TrainError
from npcrl.train.config_contradiction import ContradictionConfig
from npcrl.train.data import TrainingTurn

_SUMS = ("weighted_contradictions", "weights", "squared_weights", "contradictions", "draws")
_STATE_KEYS = {"multiplier", *_SUMS}


@dataclass
class ContradictionMultiplier:
    """The rejected samples' penalty weight and the running estimate it is steered by."""

    config: ContradictionConfig
    target: float | None
    """the logged policy's share of first draws that contradicted the card; None: the training turns
    hold no first draw, or none that contradicted (nothing to estimate or steer by)"""
    shown_mean: float
    """m: the mean reward of the shown training turns"""
    log_weight_clip: float
    multiplier: float
    weighted_contradictions: float = 0.0
    """running sum of w c"""
    weights: float = 0.0
    """running sum of w"""
    squared_weights: float = 0.0
    """running sum of w ** 2 (for the effective sample size)"""
    contradictions: float = 0.0
    """running sum of c: the contradicting first draws read, unweighted"""
    draws: float = 0.0
    """running count of the first draws read"""

    @classmethod
    def for_turns(
        cls, turns: Sequence[TrainingTurn], config: ContradictionConfig, log_weight_clip: float, rollout_turns: int
    ) -> ContradictionMultiplier:
        """The multiplier for training on ``turns``, ``rollout_turns`` per iteration. Its running sums
        start as if the policy had been seen to be the logged one, with as much weight as they hold once
        running (a rollout's first draws / (1 - decay)), so one rollout's luck does not move it at once."""
        first = [t for t in turns if t.first_draw]
        contradicting = sum(1 for t in first if t.rejected_sample)
        shown = [t.reward for t in turns if not t.rejected_sample]
        target = contradicting / len(first) if contradicting else None
        prior = rollout_turns * len(first) / len(turns) / (1.0 - config.estimate_decay) if target else 0.0
        seen = prior * (target or 0.0)
        return cls(
            config=config,
            target=target,
            shown_mean=sum(shown) / len(shown) if shown else 0.0,
            log_weight_clip=log_weight_clip,
            multiplier=config.initial_multiplier if config.penalty == "adaptive" else 1.0,
            weighted_contradictions=seen,
            weights=prior,
            squared_weights=prior,
            contradictions=seen,
            draws=prior,
        )

    @property
    def estimate(self) -> float | None:
        """The policy's estimated share of first draws contradicting the card: the target times the
        weighted over the unweighted share of the draws read (module docstring); None without any
        contradicting one among them."""
        return self._through_control_variate(lambda share, _size: share)

    @property
    def upper_bound(self) -> float | None:
        """The estimate's one-sided upper bound at ``release_confidence``: Wilson's score bound on the
        weighted share, counted as Kish's effective sample size, through the same control variate."""
        z = NormalDist().inv_cdf(self.config.release_confidence)

        def wilson_upper(share: float, size: float) -> float:
            spread = z * math.sqrt(share * (1.0 - share) / size + z * z / (4.0 * size * size))
            return (share + z * z / (2.0 * size) + spread) / (1.0 + z * z / size)

        return self._through_control_variate(wilson_upper)

    def _through_control_variate(self, of_share: Callable[[float, float], float]) -> float | None:
        """``target * of_share(weighted share, effective sample size) / unweighted share``; None
        without any contradicting first draw read (nothing to estimate from)."""
        if self.target is None or self.contradictions <= 0 or self.weights <= 0:
            return None
        share = self.weighted_contradictions / self.weights
        size = self.weights**2 / self.squared_weights
        return self.target * of_share(share, size) / (self.contradictions / self.draws)

    def _move(self, estimate_error: float, bound_error: float) -> None:
        """Up on the estimate's relative error, down only on the bound's (module docstring)."""
        if estimate_error > 0:
            error = min(estimate_error, 1.0)
        elif bound_error < 0:
            error = max(bound_error, -1.0)
        else:
            return
        moved = self.multiplier + self.config.step * error
        self.multiplier = min(max(moved, 0.0), self.config.max_multiplier)

    def observe(self, turns: Sequence[TrainingTurn], log_weights: Sequence[float], where: str) -> dict[str, float]:
        """Fold a rollout's first draws into the estimate (``log_weights``: each turn's summed
        log pi - log pi_ref) and, when adaptive, move the multiplier; the iteration's metrics."""
        if self.target is None:
            return {}
        for name in _SUMS:
            setattr(self, name, getattr(self, name) * self.config.estimate_decay)
        clip = self.log_weight_clip
        for turn, log_weight in zip(turns, log_weights, strict=True):
            if not turn.first_draw:
                continue
            if math.isnan(log_weight):
                raise TrainError(f"{where}: turn {turn.key}: its importance log-weight is NaN")
            weight = math.exp(min(max(log_weight, -clip), clip))
            contradicts = 1.0 if turn.rejected_sample else 0.0
            self.weights += weight
            self.squared_weights += weight * weight
            self.weighted_contradictions += weight * contradicts
            self.contradictions += contradicts
            self.draws += 1.0
        estimate, bound = self.estimate, self.upper_bound
        if estimate is not None and bound is not None and self.config.penalty == "adaptive":
            self._move(estimate / self.target - 1.0, bound / self.target - 1.0)
        stats = {"contradiction_multiplier": self.multiplier, "contradiction_share_target": self.target}
        if estimate is not None and bound is not None:
            stats["contradiction_share_estimate"] = estimate
            stats["contradiction_share_bound"] = bound
            # the unweighted share of the same draws: what the control variate divides out
            stats["contradiction_share_read"] = self.contradictions / self.draws
            # Kish's effective sample size: how many equally weighted first draws the estimate is worth
            stats["contradiction_estimate_ess"] = self.weights**2 / self.squared_weights
            # the contradicting first draws it rests on: where rejected samples are rare (a few per
            # hundred turns) they are a handful, and the estimate and the multiplier are noisy
            stats["contradiction_estimate_events"] = self.contradictions
        return stats

    def shaped(self, turns: Sequence[TrainingTurn], scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with each rejected sample's distance from ``shown_mean`` scaled by the multiplier."""
        if self.multiplier == 1.0:
            return scores
        rejected = torch.tensor([bool(t.rejected_sample) for t in turns])
        scaled = self.shown_mean + self.multiplier * (scores - self.shown_mean)
        return torch.where(rejected, scaled, scores)

    def state_dict(self) -> dict[str, float]:
        """What a resumed run needs (the target and mean are the training data's, recomputed)."""
        return {"multiplier": self.multiplier, **{name: getattr(self, name) for name in _SUMS}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore ``state_dict()``'s output; a field missing, unknown or not a finite number raises ValueError."""
        if set(state) != _STATE_KEYS:
            raise ValueError(
                f"contradiction multiplier state: expected the fields {sorted(_STATE_KEYS)}, got {sorted(state)}"
            )
        values = {}
        for key in _STATE_KEYS:
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"contradiction multiplier state field {key!r}: {value!r} is not a finite number >= 0")
            values[key] = float(value)
        for key, value in values.items():
            setattr(self, key, value)
