"""Where in a line the rewarded wording shows (``npcrl.sim.features.evidence_positions``)."""

from __future__ import annotations

import pytest

from npcrl.agent.persona import builtin_personas
from npcrl.sim.features import evidence_positions, line_features, words

BROM = builtin_personas()["blacksmith"]


def test_the_words_of_each_feature_in_order() -> None:
    line = "Two copper for a horseshoe. Bring me a sack of charcoal and I will pay. Ready for the road?"
    found = evidence_positions(line, BROM)
    tokens = words(line)
    assert tokens[found["mentions_lore"][0]] == "two"  # "two weeks" is in the blacksmith's lore
    # "bring me" is an offer cue and "bring" a goal word; "pay" is both; "road" is in a quest
    assert [tokens[i] for i in found["offers_quest"]] == ["bring", "sack", "charcoal", "pay", "road"]
    assert [tokens[i] for i in found["asks_back"]] == ["road"]  # the word before the question mark


def test_questions_count_where_they_open_and_at_each_mark() -> None:
    line = "Tell me what you need. The forge is cold? It may take a while?"
    assert [words(line)[i] for i in evidence_positions(line, BROM)["asks_back"]] == ["tell", "cold", "while"]


@pytest.mark.parametrize(
    "line",
    ["Two copper for a horseshoe.", "What brings you here?", "Fine weather.", "", "Bring me charcoal, will you?"],
)
def test_a_feature_has_evidence_exactly_when_the_players_see_it(line: str) -> None:
    found, features = evidence_positions(line, BROM), line_features(line, BROM)
    for name in ("asks_back", "offers_quest", "mentions_lore"):
        assert bool(found[name]) == (features[name] > 0), name
