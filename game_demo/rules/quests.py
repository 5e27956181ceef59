"""Quests an NPC can offer, read from its persona card, and a check for whether a line offers one.

Persona cards list quests as goals starting with ``Quest:``; the model talks about them in its own
words, so an offer is recognised by the quest's distinctive words showing up in the NPC's line
(e.g. "iron", "wagon", "Greyvein" for Brom's first quest), not by an exact phrase.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

QUEST_PREFIX = "quest:"
MIN_HITS = 2
"""distinctive words a line must share with a quest: one shared word ("wolves") is small talk"""

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# Words that say nothing about which quest is meant. Words shared by all of one NPC's quests
# ("traveller", "silver") are dropped per NPC in ``quests_from_goals``.
_STOPWORDS = frozenset(
    """a about after again all also an and any are as at back be been bring but by can could do does
    for from get give go going had has have he her here him his how i if in into is it its just know
    let like make me more my no not nothing now of off on one or our out over please return same she
    so some tell than that the their them then there they this those to too up us very want was we
    were what when where which who will with would you your yours""".split()
)


@dataclass(frozen=True)
class Quest:
    npc_id: str
    name: str
    """short title shown to the player and logged with ``quest_accepted``"""
    text: str
    keywords: frozenset[str]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    # Plural and possessive forms should match ("wolves"/"wolf" aside): "wagons" -> "wagon".
    word = word.removesuffix("'s")
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith("ss") else word


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in _words(text) if len(w) > 2 and w not in _STOPWORDS}


def quest_title(text: str, max_chars: int = 60) -> str:
    """The quest's first clause, capitalised and cut at a word boundary: a journal entry, not the card."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".!?")
    first = first[:1].upper() + first[1:]
    if len(first) <= max_chars:
        return first
    cut = first[: max_chars - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;") + "…"


def quests_from_goals(npc_id: str, goals: Sequence[str]) -> list[Quest]:
    """The ``Quest:`` goals of one persona, each with the words that tell it apart from the others."""
    texts = [g.strip()[len(QUEST_PREFIX) :].strip() for g in goals if g.strip().lower().startswith(QUEST_PREFIX)]
    word_sets = [_content_words(t) for t in texts]
    shared = set.intersection(*word_sets) if len(word_sets) > 1 else set()
    return [
        Quest(npc_id, quest_title(text), text, frozenset(words - shared))
        for text, words in zip(texts, word_sets, strict=True)
    ]


def offered_quest(line: str, quests: Sequence[Quest], taken: set[str] | frozenset[str] = frozenset()) -> Quest | None:
    """The quest ``line`` talks about most (at least ``MIN_HITS`` of its words), skipping taken ones."""
    words = _content_words(line)
    best: Quest | None = None
    best_hits = MIN_HITS - 1
    for quest in quests:
        if quest.name in taken:
            continue
        hits = len(words & quest.keywords)
        if hits > best_hits:
            best, best_hits = quest, hits
    return best
