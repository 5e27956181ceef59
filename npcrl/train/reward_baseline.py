"""A reward baseline per player (or per conversation) for the logged training turns.

Players differ in how much they engage, often more than one NPC line differs from another: a
player who loves lore replies to anything, an impatient one leaves after a line or two. With one baseline for
everyone (the value head, then whitening over the rollout) every turn of an eager player gets a
positive advantage and every turn of a reluctant one a negative advantage, whatever the line was, so
an update learns "speak as to the eager players" rather than "say what earns more with this player"
(docs/RESULTS.md, the default population by kind of player).

``data.reward_baseline = "player"`` takes each player's own level out: a training turn's reward
becomes ``r - b + m``, where ``m`` is the mean reward of the training turns players saw and ``b`` the
mean of the same player's *other* shown turns shrunk toward ``m`` by ``data.baseline_prior_turns``
turns' worth of weight::

    b = (S - r + k * m) / (n - 1 + k)      S, n: the sum and count of the player's shown turns

Leaving the turn itself out keeps the baseline independent of the line it judges (a baseline that
depends on the action biases the gradient); the shrinkage makes a player with one or two turns keep
most of the shared level, as without a baseline. Adding ``m`` back keeps rewards on their own scale,
so metrics read as before. A rejected sample (``TrainingTurn.rejected_sample``) is not engagement:
it does not enter any mean, and gets its player's whole-data baseline. Turns whose player is not
known (a conversation without its start record) keep their reward.

``"conversation"`` groups by conversation instead: a line is then compared only with the other
lines the same player heard in the same conversation. Holdout turns always keep their raw rewards:
the off-policy estimate reads engagement, not advantages.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npcrl.train.config_data import BASELINE_GROUPS

if TYPE_CHECKING:
    from npcrl.train.data import TrainingTurn


@dataclass(frozen=True)
class BaselineSummary:
    """What the baseline did, for ``report/data.json``."""

    group: str
    prior_turns: float
    groups: int
    """groups with at least one shown training turn"""
    ungrouped_turns: int
    """training turns whose group is unknown (kept as they were)"""
    shared_mean: float
    """m: the mean reward of the shown training turns"""
    group_mean_spread: float
    """the standard deviation, over groups, of each group's shrunk mean: how much was taken out"""


def group_of(turn: TrainingTurn, group: str) -> str | None:
    """The key a turn's baseline is kept under; None when the turn's player is not known."""
    if group == "conversation":
        return turn.conversation_id
    return turn.player_id or None


def apply_reward_baseline(
    turns: Sequence[TrainingTurn], group: str, prior_turns: float
) -> tuple[list[TrainingTurn], BaselineSummary]:
    """``turns`` with the baseline of ``group`` taken out of their rewards (module docstring)."""
    if group not in BASELINE_GROUPS:
        raise ValueError(f"reward baseline group {group!r}: must be one of {', '.join(BASELINE_GROUPS)}")
    if prior_turns <= 0:
        raise ValueError(f"baseline prior {prior_turns!r}: must be above 0")
    shown = [t for t in turns if not t.rejected_sample]
    shared = sum(t.reward for t in shown) / len(shown) if shown else 0.0
    if group == "none":
        return list(turns), BaselineSummary(group, prior_turns, 0, 0, shared, 0.0)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for turn in shown:
        key = group_of(turn, group)
        if key is not None:
            sums[key] = sums.get(key, 0.0) + turn.reward
            counts[key] = counts.get(key, 0) + 1
    out, ungrouped = [], 0
    for turn in turns:
        key = group_of(turn, group)
        if key is None:
            ungrouped += 1
            out.append(turn)
            continue
        own = 0.0 if turn.rejected_sample else turn.reward
        n = counts.get(key, 0) - (0 if turn.rejected_sample else 1)
        baseline = (sums.get(key, 0.0) - own + prior_turns * shared) / (n + prior_turns)
        out.append(dataclasses.replace(turn, reward=turn.reward - baseline + shared))
    shrunk = [(sums[k] + prior_turns * shared) / (counts[k] + prior_turns) for k in sums]
    spread = statistics.pstdev(shrunk) if shrunk else 0.0
    return out, BaselineSummary(group, prior_turns, len(sums), ungrouped, shared, spread)
