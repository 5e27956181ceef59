"""The npcrl command line on tiny models: export, info, generate, and clear errors."""

from __future__ import annotations

import json

from npcrl.cli.main import main


def test_export_info_and_generate(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", str(tiny_model_dirs["gpt2"]), "--out", str(out), "--quant", "q8", "--graph", "torch"]) == 0
    assert capsys.readouterr().out.strip() == str(out)

    assert main(["bundle", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"]["bits"] == 8 and len(info["bundle_id"]) == 16

    code = main(["generate", "--bundle", str(out), "--prompt", "Hello there", "--seed", "1", "--max-new-tokens", "6"])
    captured = capsys.readouterr()
    assert code == 0
    assert "tokens, first token" in captured.err


def test_fused_graph_is_refused_for_gpt2(tiny_model_dirs, tmp_path, capsys):
    assert main(["export", str(tiny_model_dirs["gpt2"]), "--out", str(tmp_path / "b"), "--graph", "fused"]) == 2
    assert "the fused graph supports llama models, not gpt2" in capsys.readouterr().err


def test_errors_exit_2_with_the_path_named(tmp_path, capsys):
    assert main(["generate", "--bundle", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
    assert f"{tmp_path / 'missing'}: bundle directory does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_chat_logs_turns_ratings_quests_and_walking_away(tiny_bundles, tmp_path, monkeypatch, capsys):
    from npcrl.playlog import ConversationEnd, EngagementEvent, NpcTurn, read_log_dir

    lines = iter(["Hello smith!", "/+", "Any work?", "/quest iron_ore", "/bye"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    logs = tmp_path / "logs"
    code = main(
        ["chat", "--bundle", str(tiny_bundles["llama-q8"]), "--persona", "blacksmith", "--logs", str(logs)]
        + ["--seed", "1", "--max-new-tokens", "8"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("Brom: ")
    records = list(read_log_dir(logs))
    assert [r.turn_index for r in records if isinstance(r, NpcTurn)] == [0, 1]
    kinds = [r.kind for r in records if isinstance(r, EngagementEvent)]
    assert kinds == ["rating", "reply", "quest_accepted", "walk_away"]
    assert isinstance(records[-1], ConversationEnd) and records[-1].reason == "walked_away"

    assert main(["rewards", str(logs)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["turns"] == 2 and summary["conversations"] == 1


def test_chat_refuses_an_unknown_persona(tiny_bundles, capsys):
    assert main(["chat", "--bundle", str(tiny_bundles["llama-q8"]), "--persona", "dragon"]) == 2
    assert "persona 'dragon' is neither a built-in" in capsys.readouterr().err
