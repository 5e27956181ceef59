"""The rows of a bundle's evaluation, named once.

Each constant is the metric's label, which is also its key wherever the rows are stored: the
terminal table and HTML report of ``npcrl eval``, its ``metrics.json``, and the ``metrics`` of a
loop round's ``decision.json``. The evaluator writes these rows, and the loop's guards and
``loop.md`` read them, through these names, so a label changed here changes everywhere together.
"""

from __future__ import annotations

CONVERSATIONS = "conversations"
NPC_TURNS = "NPC turns"
ENGAGEMENT = "reward / conversation (95% CI)"
"""mean reward a conversation earned, with its 95% bootstrap interval: (mean, low, high)"""
REWARD_PER_TURN = "reward / turn"
CONVERSATION_LENGTH = "NPC turns / conversation"
WALK_AWAY_RATE = "walk-away rate"
FILTERED_RATE = "filtered rate"
WORDS_PER_LINE = "words / line"
TOKENS_PER_LINE = "tokens / line"
DISTINCT_1 = "distinct-1"
DISTINCT_2 = "distinct-2"
REPETITION_RATE = "repetition rate"
CARD_CONTRADICTIONS = "card contradictions / line"
"""share of NPC lines whose model sample contradicted the persona card (``npcrl.agent.consistency``)"""
CARD_CONTRADICTIONS_RISE = "card contradictions / line, paired rise (95% CI)"
"""the candidate's share minus the compared bundle's, conversation k paired with conversation k:
(rise, low, high)"""
KL_PER_LINE = "KL to reference (nats / line)"
"""KL of the evaluated bundle to the reference bundle, nats per NPC line"""
PERPLEXITY = "held-out persona perplexity"
PAIRED_GAIN = "engagement gain, paired (95% CI)"
"""mean per-conversation reward difference to the compared bundle, with its interval: (mean, low, high)"""


_PROFILE_ROW = ("engagement gain, paired, ", " players (95% CI)")


def paired_gain_of_profile(profile: str) -> str:
    """The row of the paired gain with one player profile's conversations only (``npcrl.evaluation.by_profile``)."""
    return f"{_PROFILE_ROW[0]}{profile}{_PROFILE_ROW[1]}"


def profile_of_row(label: str) -> str | None:
    """The profile a ``paired_gain_of_profile`` row is of; None for any other row."""
    head, tail = _PROFILE_ROW
    if label.startswith(head) and label.endswith(tail) and len(label) > len(head) + len(tail):
        return label[len(head) : -len(tail)]
    return None
