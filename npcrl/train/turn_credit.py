"""What the trainer made of each turn it read: ``report/turn_credit.jsonl``, one row per turn per iteration.

The metrics say how far an update moved the policy; they cannot say toward which lines. Each row
here is one rollout turn as the update used it: its reward, the value it was measured against, the
advantage its tokens got (after whitening, as the loss saw it), the importance weights and its KL
to the reference. Joined on ``turn`` (``TrainingTurn.key``) with what the lines say (e.g. the
simulated players' features, ``bench/profile_turns.py --credit``), it shows which kinds of line
an update pushed up and which it pushed down, and why: a line with a high reward but a higher
value gets a negative advantage.

The rows live in the trainer's checkpointed state beside the metrics, so a resumed run writes the
file an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

from npcrl.train.rollout import Rollout

TURN_CREDIT_FILE = "turn_credit.jsonl"


def turn_credit_rows(rollout: Rollout, iteration: int) -> list[dict[str, Any]]:
    """One row per turn of a rollout whose advantages and importance weights are computed;
    ``iteration`` counts from 1, as the metrics' does."""
    if rollout.advantages is None or rollout.weights is None:
        raise ValueError("turn credit needs the rollout's advantages and importance weights (run advantages first)")
    rows = []
    for i, turn in enumerate(rollout.turns):
        real = rollout.batch.mask[i].bool()
        advantages = rollout.advantages[i][real]
        rows.append(
            {
                "iteration": iteration,
                "turn": turn.key,
                "npc_id": turn.npc_id,
                "tokens": int(real.sum()),
                "reward": float(rollout.batch.scores[i]),
                "value_first": float(rollout.values[i][real][0]),
                "advantage_mean": float(advantages.mean()),
                "advantage_first": float(advantages[0]),
                "advantage_last": float(advantages[-1]),
                "weight_mean": float(rollout.weights[i][real].mean()),
                "kl": float(rollout.kl[i][real].sum()),
            }
        )
    return rows
