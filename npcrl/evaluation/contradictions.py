"""Lines that contradict their persona card, counted from play logs: the evaluation's share
(``CARD_CONTRADICTIONS``) and the paired rise between two evaluations that the loop's contradiction
guard reads (``CARD_CONTRADICTIONS_RISE``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

from npcrl.agent.consistency import CONTRADICTS_CARD, RESAMPLED, card_contradictions
from npcrl.agent.persona import Persona
from npcrl.evaluation.shares import paired_share_rise, require_one_set_of_players
from npcrl.playlog import NpcTurn, read_log_dir
from npcrl.reward.engagement import ConversationLog, group_conversations


def contradicts_card(turn: NpcTurn, persona: Persona) -> bool:
    """Did the model's sample for ``turn`` contradict ``persona``'s card? Its shown line (checked
    here, for logs played without the agent's check), or the reason the agent logged for it."""
    reason = turn.filter_reason or ""
    if reason.startswith((CONTRADICTS_CARD, RESAMPLED + CONTRADICTS_CARD)):
        return True
    return not (turn.filtered or turn.fallback) and bool(card_contradictions(turn.text, persona))


def card_contradiction_rate(conversations: Sequence[ConversationLog], personas: Sequence[Persona]) -> float:
    """Share of the NPC turns of ``conversations`` whose sample contradicted their persona card
    (``contradicts_card``); conversations with no start record or an unknown card are left out."""
    cards = {persona.persona_hash: persona for persona in personas}
    flags = [
        contradicts_card(turn, cards[log.start.persona_hash])
        for log in conversations
        if log.start is not None and log.start.persona_hash in cards
        for turn in log.turns.values()
    ]
    return sum(flags) / len(flags) if flags else math.nan


def contradiction_counts(
    conversations: Iterable[ConversationLog], personas: Sequence[Persona]
) -> list[tuple[int, int]]:
    """(contradicting turns, turns) of each conversation with an NPC turn, in log order (as
    ``rewards_of_conversations``, so two evaluations pair alike); (0, 0) where its card is unknown."""
    cards = {persona.persona_hash: persona for persona in personas}
    counts = []
    for log in conversations:
        if not log.turns:
            continue
        persona = cards.get(log.start.persona_hash) if log.start is not None else None
        if persona is None:
            counts.append((0, 0))
            continue
        counts.append((sum(contradicts_card(turn, persona) for turn in log.turns.values()), len(log.turns)))
    return counts


def paired_contradiction_rise_of_logs(
    candidate_logs: str | os.PathLike[str], current_logs: str | os.PathLike[str], personas: Sequence[Persona]
) -> tuple[float, float, float]:
    """The candidate's share of card-contradicting lines minus the current bundle's, with its 95%
    interval, conversation k of one evaluation paired with conversation k of the other
    (``npcrl.evaluation.shares.paired_share_rise``); sides that do not pair are refused by name."""
    ours, theirs = (
        contradiction_counts(group_conversations(read_log_dir(logs)).values(), personas)
        for logs in (candidate_logs, current_logs)
    )
    require_one_set_of_players((candidate_logs, len(ours)), (current_logs, len(theirs)))
    return paired_share_rise(ours, theirs)
