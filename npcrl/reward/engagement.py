"""From play-log records to per-turn rewards: group records by conversation, attach each
engagement event to the turn it follows, and score the turns with a ``RewardSpec``.

Used by ``npcrl rewards`` (and by the trainer's data stage). Turns that were filtered or answered
with a fallback line are scored like filtered turns (never positive) and flagged ``trainable=False``:
the model did not produce what the player saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from npcrl.errors import RewardSpecError
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, Record
from npcrl.reward.spec import RewardSpec, TurnOutcome, conversation_rewards


@dataclass
class ConversationLog:
    """Everything the log holds about one conversation (start/end may be missing after a crash)."""

    conversation_id: str
    start: ConversationStart | None = None
    turns: dict[int, NpcTurn] = field(default_factory=dict)
    events: list[EngagementEvent] = field(default_factory=list)
    end: ConversationEnd | None = None


@dataclass(frozen=True)
class TurnReward:
    conversation_id: str
    turn_index: int
    npc_id: str
    bundle_id: str
    reward: float
    trainable: bool
    """False for filtered and fallback turns, which must never enter a training batch"""
    events: tuple[tuple[str, float | None], ...]


def group_conversations(records: Iterable[Record]) -> dict[str, ConversationLog]:
    conversations: dict[str, ConversationLog] = {}
    for record in records:
        log = conversations.setdefault(record.conversation_id, ConversationLog(record.conversation_id))
        if isinstance(record, ConversationStart):
            log.start = record
        elif isinstance(record, NpcTurn):
            log.turns[record.turn_index] = record
        elif isinstance(record, EngagementEvent):
            log.events.append(record)
        elif isinstance(record, ConversationEnd):
            log.end = record
    return conversations


def score_conversation(log: ConversationLog, spec: RewardSpec) -> list[TurnReward]:
    """Rewards for the turns of one conversation; events for turns missing from the log are ignored."""
    indices = sorted(log.turns)
    events: dict[int, list[tuple[str, float | None]]] = {i: [] for i in indices}
    for event in sorted(log.events, key=lambda e: e.time):
        if event.turn_index in events:
            events[event.turn_index].append((event.kind, event.value))
    outcomes = [
        TurnOutcome(
            turn_index=i,
            filtered=log.turns[i].filtered or log.turns[i].fallback,
            events=tuple(events[i]),
        )
        for i in indices
    ]
    rewards = conversation_rewards(outcomes, spec)
    return [
        TurnReward(
            conversation_id=log.conversation_id,
            turn_index=i,
            npc_id=log.turns[i].npc_id,
            bundle_id=log.turns[i].bundle_id,
            reward=reward,
            trainable=not outcome.filtered,
            events=tuple(outcome.events),
        )
        for i, outcome, reward in zip(indices, outcomes, rewards, strict=True)
    ]


def turn_rewards(records: Iterable[Record], spec: RewardSpec, unscorable: list[str] | None = None) -> list[TurnReward]:
    """Every logged NPC turn with its reward, conversation by conversation.

    A conversation whose events the spec cannot score (a value-scaled kind logged without a value)
    raises ``RewardSpecError``; given an ``unscorable`` list, it is skipped and described there
    instead, so one odd record does not stop a whole directory."""
    result: list[TurnReward] = []
    for log in group_conversations(records).values():
        try:
            result.extend(score_conversation(log, spec))
        except RewardSpecError as exc:
            if unscorable is None:
                raise
            unscorable.append(f"conversation {log.conversation_id}: {exc}")
    return result


def reward_summary(rewards: list[TurnReward]) -> dict[str, object]:
    """Mean reward overall and per NPC and bundle (trainable turns only), plus counts."""
    trainable = [r for r in rewards if r.trainable]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    def by(key: str) -> dict[str, float | None]:
        groups: dict[str, list[float]] = {}
        for r in trainable:
            groups.setdefault(getattr(r, key), []).append(r.reward)
        return {name: mean(values) for name, values in sorted(groups.items())}

    return {
        "turns": len(rewards),
        "trainable_turns": len(trainable),
        "untrainable_turns": len(rewards) - len(trainable),
        "conversations": len({r.conversation_id for r in rewards}),
        "mean_reward": mean([r.reward for r in trainable]),
        "mean_reward_per_npc": by("npc_id"),
        "mean_reward_per_bundle": by("bundle_id"),
    }
