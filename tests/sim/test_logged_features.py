"""The simulator's features of logged NPC lines (``npcrl.sim.logged_features``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playlog_helpers import build_log, npc_turn, write_log

from npcrl.agent.persona import builtin_personas
from npcrl.errors import NpcrlError
from npcrl.sim.features import FEATURES, line_features
from npcrl.sim.logged_features import logged_line_features


def test_each_line_is_read_with_its_conversations_earlier_lines(tmp_path: Path) -> None:
    brom = builtin_personas()["blacksmith"]
    lines = {
        "a": ["Aye, the forge is hot. What brings you, friend?", "Aye, the forge is hot. What brings you, friend?"],
        "b": ["Two copper for a horseshoe."],
    }
    records = [  # out of order, and one line written twice (a retried write): three lines in all
        npc_turn("a", 1, npc_id="blacksmith", text=lines["a"][1]),
        npc_turn("b", 0, npc_id="blacksmith", text=lines["b"][0]),
        npc_turn("a", 0, npc_id="blacksmith", text=lines["a"][0]),
        npc_turn("a", 0, npc_id="blacksmith", text=lines["a"][0]),
    ]
    write_log(tmp_path / "play-20260101T000000Z-000000.npl", build_log(records)[0])
    result = logged_line_features(tmp_path, builtin_personas())
    expected = [
        line_features(lines["a"][0], brom, []),
        line_features(lines["a"][1], brom, [lines["a"][0]]),  # says it again: repeats itself
        line_features(lines["b"][0], brom, []),
    ]
    assert result.lines == 3
    assert result.means == pytest.approx({name: sum(f[name] for f in expected) / 3 for name in (*FEATURES, "words")})
    assert result.above_zero == pytest.approx({name: sum(f[name] > 0 for f in expected) / 3 for name in FEATURES})
    assert expected[1]["repeats_itself"] > 0 and result.means["asks_back"] == pytest.approx(2 / 3)


def test_a_line_of_an_npc_whose_card_is_not_given_is_an_error(tmp_path: Path) -> None:
    write_log(tmp_path / "play-20260101T000000Z-000000.npl", build_log([npc_turn("a", 0, npc_id="stranger")])[0])
    with pytest.raises(NpcrlError, match="conversation a is with NPC 'stranger', whose card is not given"):
        logged_line_features(tmp_path, builtin_personas())


def test_the_bench_counts_the_lines_in_which_the_npc_speaks_of_itself(tmp_path: Path) -> None:
    from script_modules import load_script

    bench = load_script("bench_line_features", "bench/line_features.py")
    records = [  # one line written twice (a retried write) counts once
        npc_turn("a", 0, text="I'm Brom, and the forge is mine."),
        npc_turn("a", 0, text="I'm Brom, and the forge is mine."),
        npc_turn("a", 1, text="My name's not for strangers. Two copper."),
        npc_turn("b", 0, text="Call me when the iron is hot; I am busy."),
        npc_turn("b", 1, text="Aye, a fine blade. Firmament and iambs."),
    ]
    write_log(tmp_path / "play-20260101T000000Z-000000.npl", build_log(records)[0])
    assert bench.speaks_of_itself_share(tmp_path) == pytest.approx(3 / 4)  # not "iambs", "Firmament"
