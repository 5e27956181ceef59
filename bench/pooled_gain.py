"""Paired engagement gains of two bundles pooled over several evaluations on different players.

One evaluation of 96 players leaves a paired interval about ±0.36 per conversation on the default
population: too wide to tell apart two training setups ~12% apart. Evaluating both bundles again
on fresh players (``npcrl eval --seed S`` with a seed no earlier evaluation used) and pooling the
pairs narrows it: conversation k of a set is paired with conversation k of the same set's other
side, and the bootstrap resamples the pooled differences. Prints each set's paired gain and the
pooled one (also in percent of the current side's engagement over the same conversations), and the
share of NPC turns that contradicted the persona card on each side.

Usage: python bench/pooled_gain.py CANDIDATE_LOGS CURRENT_LOGS [CANDIDATE_LOGS CURRENT_LOGS ...]
       [--spec SPEC] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from npcrl.agent.persona import builtin_personas
from npcrl.evaluation.contradictions import card_contradiction_rate
from npcrl.evaluation.metrics import paired_gain, rewards_of_conversations
from npcrl.evaluation.shares import require_one_set_of_players
from npcrl.playlog import read_log_dir
from npcrl.reward.engagement import ConversationLog, group_conversations
from npcrl.reward.spec import RewardSpec, default_reward_spec, load_reward_spec


@dataclass(frozen=True)
class Side:
    """One side of a pair of evaluations: its conversations with an NPC turn, in log order (which
    is conversation order for ``npcrl eval`` logs), and the reward each earned."""

    conversations: list[ConversationLog]
    rewards: list[float]


@dataclass(frozen=True)
class GainRow:
    label: str
    conversations: int
    candidate: float  # mean engagement per conversation
    current: float
    gain: tuple[float, float, float]  # paired (mean, low, high)
    candidate_contradictions: float  # share of NPC turns (``card_contradiction_rate``)
    current_contradictions: float


def read_side(log_dir: Path, spec: RewardSpec) -> Side:
    conversations = [log for log in group_conversations(read_log_dir(log_dir)).values() if log.turns]
    return Side(conversations, rewards_of_conversations(conversations, spec))


def gain_row(label: str, candidate: Sequence[Side], current: Sequence[Side], seed: int) -> GainRow:
    """The paired gain of the candidate's conversations over the current ones', pairs kept in order;
    card contradictions counted over the built-in cards, as ``npcrl eval`` does by default."""
    cards = list(builtin_personas().values())
    candidate_rewards = [r for side in candidate for r in side.rewards]
    current_rewards = [r for side in current for r in side.rewards]
    return GainRow(
        label,
        len(current_rewards),
        math.fsum(candidate_rewards) / len(candidate_rewards),
        math.fsum(current_rewards) / len(current_rewards),
        paired_gain(candidate_rewards, current_rewards, seed=seed),
        card_contradiction_rate([c for side in candidate for c in side.conversations], cards),
        card_contradiction_rate([c for side in current for c in side.conversations], cards),
    )


def pooled_gains(pairs: Sequence[tuple[Path, Path]], spec: RewardSpec, seed: int = 0) -> list[GainRow]:
    """One row per (candidate logs, current logs) pair, then, for more than one pair, the pooled row."""
    if not pairs:
        raise ValueError("pooled_gain needs at least one pair of evaluation log directories")
    sides = [(read_side(candidate, spec), read_side(current, spec)) for candidate, current in pairs]
    rows = []
    for (candidate_dir, current_dir), (candidate, current) in zip(pairs, sides, strict=True):
        require_one_set_of_players((candidate_dir, len(candidate.rewards)), (current_dir, len(current.rewards)))
        rows.append(gain_row(f"{candidate_dir} vs {current_dir}", [candidate], [current], seed))
    if len(pairs) > 1:
        rows.append(gain_row("pooled", [c for c, _ in sides], [k for _, k in sides], seed))
    return rows


def markdown(rows: Sequence[GainRow]) -> str:
    lines = [
        "| set | players | candidate | current | paired gain [95% CI] | in % of current | card contradictions |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mean, low, high = row.gain
        percent = [100.0 * value / row.current for value in (mean, low, high)] if row.current else [math.nan] * 3
        lines.append(
            f"| {row.label} | {row.conversations} | {row.candidate:.3f} | {row.current:.3f} | "
            f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] | {percent[0]:+.1f}% [{percent[1]:+.1f}%, {percent[2]:+.1f}%] | "
            f"{row.current_contradictions:.3f} → {row.candidate_contradictions:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", help="CANDIDATE_LOGS CURRENT_LOGS, one pair per evaluation")
    parser.add_argument("--spec", help="reward spec TOML (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    if len(args.logs) % 2:
        parser.error(f"log directories come in pairs (candidate, current); got {len(args.logs)}: {args.logs}")
    paths = [Path(p) for p in args.logs]
    spec = load_reward_spec(args.spec) if args.spec else default_reward_spec()
    print(markdown(pooled_gains(list(zip(paths[::2], paths[1::2], strict=True)), spec, args.seed)))


if __name__ == "__main__":
    main()
