"""``logs inspect | stats | validate | purge`` through an argparse parser, as the npcrl command line wires them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from playlog_helpers import build_log, conversation, event, npc_turn, write_log

from npcrl.cli.logs import add_logs_parser
from npcrl.errors import LogFormatError
from npcrl.playlog import ConversationStart, LogReader, PlayLogWriter
from npcrl.privacy.pseudonym import PseudonymKeyError, load_or_create_key, pseudonym


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="npcrl")
    add_logs_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


pytestmark = pytest.mark.usefixtures("key_file")  # a fresh key per test (tests/conftest.py)


def test_inspect_shows_why_a_line_was_resampled_and_how_many_samples_were_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = {
        "response_ids": [1, 2],
        "logprobs": [-0.5, -0.5],
        "full_logprobs": [-0.6, -0.6],
        "sampler": {"temperature": 0.7, "seed": 1},
        "reason": "contradicts_card:name:Grimbold",
    }
    resampled = npc_turn(
        "conv-a", 0, filter_reason="resampled:contradicts_card:name:Grimbold", rejected_samples=[sample, sample]
    )
    write_log(
        tmp_path / "play-20250101T000000Z-000000.npl", build_log([conversation("conv-a", turns=0)[0], resampled])[0]
    )
    assert run(["logs", "inspect", str(tmp_path)]) == 0
    turn = capsys.readouterr().out.splitlines()[1]
    assert "reason=resampled:contradicts_card:name:Grimbold rejected_samples=2" in turn


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    first = conversation("conv-a", turns=2)
    second = conversation("conv-b", turns=1) + [
        npc_turn("conv-b", 1, tokens=4, filtered=True, filter_reason="blocklist", bundle_id="ffffeeeeddddcccc"),
        event("conv-b", 1, 7, kind="walk_away", value=None),
    ]
    write_log(tmp_path / "play-20250101T000000Z-000000.npl", build_log(first)[0])
    write_log(tmp_path / "play-20250101T000001Z-000001.npl", build_log(second)[0])
    return tmp_path


def test_inspect_prints_one_line_per_record(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["logs", "inspect", str(sample_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 + 6
    assert lines[0].startswith("play-20250101T000000Z-000000.npl@12 2023-11-14T22:13:20.000+00:00 conversation_start")
    assert "conv=conv-a" in lines[0] and "bundle=0123456789abcdef" in lines[0]
    turn = lines[1]
    assert (
        "npc_turn" in turn
        and "tokens=8" in turn
        and "stop=eos" in turn
        and '"Can you fix my sword? — Grüße 🐉"' in turn
    )
    assert "filtered(blocklist)" in lines[10]
    assert "event=walk_away value=None" in lines[11]


def test_inspect_filters_limits_and_prints_json(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["logs", "inspect", str(sample_dir), "--kind", "npc_turn", "--limit", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["kind"], r["conversation_id"], r["turn_index"]) for r in rows] == [
        ("npc_turn", "conv-a", 0),
        ("npc_turn", "conv-a", 1),
    ]
    assert rows[0]["file"] == "play-20250101T000000Z-000000.npl" and len(rows[0]["logprobs"]) == 8
    with pytest.raises(SystemExit):
        run(["logs", "inspect", str(sample_dir), "--kind", "gossip"])
    with pytest.raises(SystemExit):
        run(["logs", "inspect", str(sample_dir), "--limit", "0"])


def test_stats_counts_everything(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["logs", "stats", str(sample_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 2 and summary["records"] == 12
    assert summary["records_per_kind"] == {
        "conversation_start": 2,
        "npc_turn": 4,
        "engagement_event": 4,
        "conversation_end": 2,
    }
    assert (summary["conversations"], summary["turns"], summary["filtered_turns"]) == (2, 4, 1)
    assert summary["events_per_kind"] == {"rating": 3, "walk_away": 1}
    assert summary["turns_per_bundle"] == {"0123456789abcdef": 3, "ffffeeeeddddcccc": 1}
    assert (summary["corrupt_skipped"], summary["torn_tail_bytes"]) == (0, 0)
    assert run(["logs", "stats", str(sample_dir)]) == 0
    text = capsys.readouterr().out
    assert "turns: 4" in text and "  walk_away: 1" in text


def test_validate_passes_a_clean_log_and_tolerates_a_torn_tail(
    sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["logs", "validate", str(sample_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK"
    last = sample_dir / "play-20250101T000001Z-000001.npl"
    last.write_bytes(last.read_bytes()[:-5])
    assert run(["logs", "validate", str(sample_dir)]) == 0
    out = capsys.readouterr().out
    assert "torn tail" in out and out.splitlines()[-1] == "OK"


def test_validate_fails_on_corruption_and_reports_where(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sample_dir / "play-20250101T000000Z-000000.npl"
    data, spans = build_log(conversation("conv-a", turns=2))
    damaged = bytearray(data)
    damaged[spans[2][0] + 20] ^= 0x40
    path.write_bytes(damaged)
    assert run(["logs", "validate", str(sample_dir)]) == 1
    out = capsys.readouterr().out
    assert f"{path.name}@{spans[2][0]}: corrupt, {spans[2][1] - spans[2][0]} bytes" in out
    assert out.splitlines()[-1] == "CORRUPT"
    assert run(["logs", "stats", str(sample_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corrupt_skipped"] == 1


def test_validate_reports_an_unreadable_file_and_checks_the_others(
    sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(sample_dir / "play-0-broken.npl", b"PK\x03\x04 this is a zip")
    assert run(["logs", "validate", str(sample_dir)]) == 1
    out = capsys.readouterr().out
    assert "play-0-broken.npl: unreadable" in out and "bad magic" in out
    assert "3 file(s), 12 record(s)" in out


def test_missing_directory_is_a_log_format_error(tmp_path: Path) -> None:
    for command in ("inspect", "stats", "validate"):
        with pytest.raises(LogFormatError, match="does not exist"):
            run(["logs", command, str(tmp_path / "nowhere")])


@pytest.mark.parametrize("command", ["inspect", "stats", "validate", "purge"])
def test_every_logs_command_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["logs", command, "--help"])
    text = capsys.readouterr().out
    assert f"Example:\n  npcrl logs {command} " in text


def played(directory: Path, players: list[str]) -> None:
    """One conversation per player, through the writer and its default key."""
    with PlayLogWriter(directory, max_file_bytes=700) as writer:
        for k, player in enumerate(players):
            for record in conversation(f"conv-{k}", turns=2):
                if isinstance(record, ConversationStart):
                    record.player_id = player
                writer.append(record)


def test_purge_by_player_dry_run_then_for_real(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    played(tmp_path, ["alice@example.com", "bob", "alice@example.com"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert run(["logs", "purge", str(tmp_path), "--player", "alice@example.com", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 conversation(s) chosen" in out and "would remove 12 record(s)" in out and "would delete" in out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run(["logs", "purge", str(tmp_path), "--player", "alice@example.com"]) == 0
    out = capsys.readouterr().out
    assert "removed 12 record(s) from" in out and ("rewritten" in out or "deleted" in out)
    left = list(LogReader(tmp_path))
    assert {r.conversation_id for r in left} == {"conv-1"} and len(left) == 6
    bob = pseudonym("bob", load_or_create_key(key_file))
    assert run(["logs", "purge", str(tmp_path), "--pseudonym", bob]) == 0
    assert list(LogReader(tmp_path)) == []


def test_purge_by_age_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "play-1.npl", build_log(conversation("old", turns=1))[0])  # written in 2023
    assert run(["logs", "purge", str(tmp_path), "--older-than", "4w", "--dry-run"]) == 0
    assert "would remove 4 record(s) from 1 file(s)" in capsys.readouterr().out
    assert run(["logs", "purge", str(tmp_path), "--older-than", "12h"]) == 0
    assert not (tmp_path / "play-1.npl").exists()


def test_purge_refuses_bad_arguments(tmp_path: Path, key_file: Path) -> None:
    for argv in (["--older-than", "30x"], ["--older-than", "0d"], ["--pseudonym", "bob"]):
        with pytest.raises(SystemExit):
            run(["logs", "purge", str(tmp_path), *argv])
    with pytest.raises(LogFormatError, match="give --older-than, --player or --pseudonym"):
        run(["logs", "purge", str(tmp_path)])
    with pytest.raises(PseudonymKeyError, match=f"{key_file}: no pseudonym key file"):
        run(["logs", "purge", str(tmp_path), "--player", "bob"])
    assert not key_file.exists()  # purge never makes a key: a new key matches nothing
