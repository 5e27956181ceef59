"""The ``[contradiction]`` section of the training config: how hard the samples the agent rejected
for contradicting the persona card are penalised.

``penalty = "fixed"`` gives every rejected sample the reward spec's ``contradiction_reward``.
``"adaptive"`` scales that penalty by a multiplier that training adjusts, as a Lagrange multiplier
of constrained PPO, so that the policy's estimated share of first samples contradicting the card stays
at the logged policy's (``npcrl.train.contradiction_multiplier``): no more penalty than the guard
"training never raises contradictions" needs, since every bit of it is paid for in engagement
(docs/RESULTS.md, "The rejected samples ended at their contradiction"). It is released only where
the estimate's upper bound shows the share fell. ``"adaptive"`` is the default: measured on the five
shipped populations it resolved four, as many as the fixed penalty, and on the same play it led
where they differed (docs/RESULTS.md, "The adaptive penalty becomes the default"). Where there are no
rejected samples (``data.mode = "reward_model"``, or ``data.penalize_card_contradictions = false``)
there is nothing to weigh, and both settings train alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from npcrl.train.config_ranges import check as _check
from npcrl.train.config_ranges import check_fields as _check_fields

CONTRADICTION_PENALTIES = ("fixed", "adaptive")


@dataclass
class ContradictionConfig:
    """How the rejected samples' penalty is weighted (logged mode with rejected samples)."""

    penalty: str = "adaptive"
    """'adaptive': the spec's contradiction_reward scaled by a multiplier that keeps the policy's estimated
    contradiction share at the logged policy's (npcrl.train.contradiction_multiplier); 'fixed': as it is"""
    initial_multiplier: float = 1.0
    """adaptive: the multiplier the first iteration uses (1: the spec's penalty as it is)"""
    step: float = 0.2
    """adaptive: how far one iteration moves the multiplier per unit of relative error (estimate / target - 1,
    clipped to [-1, 1])"""
    estimate_decay: float = 0.9
    """adaptive: the weight the running estimate keeps of earlier iterations' first samples; each rollout
    holds only about one rejected sample per 16 turns, so one iteration alone is mostly noise"""
    max_multiplier: float = 5.0
    """adaptive: the multiplier never rises above it"""
    release_confidence: float = 0.95
    """adaptive: the multiplier falls only while the estimate's one-sided upper bound at this confidence is
    below the target (it rises while the estimate itself is above); 0.5 moves it on the estimate alone"""

    def validate(self) -> None:
        _check_fields(self, "contradiction.")
        _check(self.penalty in CONTRADICTION_PENALTIES, "contradiction.penalty", self.penalty, "'fixed' or 'adaptive'")
        _check(
            self.initial_multiplier <= self.max_multiplier,
            "contradiction.initial_multiplier",
            self.initial_multiplier,
            f"at most contradiction.max_multiplier ({self.max_multiplier})",
        )
