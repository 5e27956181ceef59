"""bench/credit_reach.py: the share of a line's reward that reaches the words the players reward."""

from __future__ import annotations

from pathlib import Path

import pytest
from playlog_helpers import build_log, npc_turn, write_log
from script_modules import load_script


def _bench():
    return load_script("credit_reach_bench", "bench/credit_reach.py")


def test_the_weight_falls_with_the_tokens_after_the_evidence(tmp_path: Path) -> None:
    early = "Bring me charcoal and you shall have silver coins and my thanks for a long long while"
    late = "A long long while has passed and the weather is fair and dry today so bring me charcoal"
    turns = [
        npc_turn("a", 0, tokens=20, npc_id="blacksmith", text=early),
        npc_turn("b", 0, tokens=20, npc_id="blacksmith", text=late),
    ]
    write_log(tmp_path / "play-20260101T000000Z-000000.npl", build_log(turns)[0])
    bench = _bench()
    lines = bench.npc_lines(tmp_path)
    found, every, tails = bench.reach(lines, {"blacksmith": _blacksmith()}, 0.9)
    assert tails == [0, 0]  # no tokenizer: the tail is not known
    offers = found["offers_quest"]
    assert offers.lines == 2
    # "bring" opens the first line (19 tokens after it) and is third from the end of the second
    # (its 18 words mapped onto 20 tokens: 2 words after it are 2 tokens).
    assert offers.after_first == [19, 2]
    # the last words: "silver coins" (goal and cue words, 9 of 18 words left) and "charcoal"
    assert offers.after_last == [round(9 * 19 / 17), 0]
    assert every == pytest.approx(sum(0.9**k for k in range(20)) / 20)
    assert found["asks_back"].lines == 0


def test_the_table_and_a_missing_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    write_log(
        tmp_path / "play-20260101T000000Z-000000.npl",
        build_log([npc_turn("a", 0, npc_id="blacksmith", text="What brings you here?")])[0],
    )
    bench = _bench()
    monkeypatch.setattr("sys.argv", ["credit_reach.py", str(tmp_path), "--lam", "1.0"])
    bench.main()
    out = capsys.readouterr().out
    assert "| asks_back | 1.000 | 0.00 | 59 | 1.000 | 0 | 1.000 |" in out  # "what" opens it, "here" ends it
    assert "| offers_quest | 0 | – | – | – | – | – |" in out
    monkeypatch.setattr("sys.argv", ["credit_reach.py", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="nope: no such play-log directory"):
        bench.main()


def _blacksmith():
    from npcrl.agent.persona import builtin_personas

    return builtin_personas()["blacksmith"]


def test_with_the_tokenizer_the_unseen_tail_counts_after_the_words(tmp_path: Path, monkeypatch, capsys) -> None:
    from tiny_tokenizer import train_byte_level_bpe

    shown = "Bring me charcoal and you shall have silver."
    tokenizer = train_byte_level_bpe([shown + " And then we", shown] * 10, 300)
    ids = list(tokenizer.encode(shown + " And then we").ids)
    kept = len(tokenizer.encode(shown).ids)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    logs = tmp_path / "logs"
    logs.mkdir()
    turn = npc_turn("a", 0, tokens=len(ids), npc_id="blacksmith", text=shown, response_ids=ids)
    write_log(logs / "play-20260101T000000Z-000000.npl", build_log([turn])[0])
    bench = _bench()

    def decode(seq):
        return tokenizer.decode(list(seq), skip_special_tokens=True)

    found, _, tails = bench.reach(bench.npc_lines(logs), {"blacksmith": _blacksmith()}, 1.0, decode)
    assert tails == [len(ids) - kept]
    # "silver" closes the shown line: after it come the full stop, if a token of its own, and the tail
    assert found["offers_quest"].after_last[0] >= len(ids) - kept
    monkeypatch.setattr("sys.argv", ["credit_reach.py", str(logs), "--tokenizer", str(path)])
    bench.main()
    assert f"unseen tail: 1 of 1 lines (100%), {len(ids) - kept:.1f} tokens each on average" in capsys.readouterr().out
