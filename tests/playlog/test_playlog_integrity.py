"""Play logs never poison training and never count twice: non-finite numbers are refused when
written and skipped (named by file and offset) when read; a record read twice counts once."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
from playlog_helpers import conversation, event, npc_turn

from npcrl.cli.main import main
from npcrl.errors import LogFormatError, NpcrlError
from npcrl.playlog import (
    ConversationStart,
    EngagementEvent,
    LogReader,
    NpcTurn,
    PlayLogWriter,
    Record,
    encode_record,
    read_log_dir,
)
from npcrl.playlog.framing import FILE_HEADER, encode_frame, file_header
from npcrl.playlog.records import KIND_ENGAGEMENT_EVENT
from npcrl.reward.spec import default_reward_spec
from npcrl.train.config import DataConfig
from npcrl.train.data import load_training_data

NON_FINITE = [
    (lambda: event(value=math.inf), r"EngagementEvent\.value: expected a finite number, got inf"),
    (lambda: event(value=math.nan), r"EngagementEvent\.value: expected a finite number, got nan"),
    (lambda: event(value=np.float64(-np.inf)), r"EngagementEvent\.value: .*-inf"),
    (lambda: event(time=math.nan), r"EngagementEvent\.time: expected a finite number"),
    (lambda: event(data={"stats": {"x": [1.0, math.nan]}}), r"EngagementEvent\.data: non-finite number nan at \['stats'\]\['x'\]\[1\]"),
    (lambda: event(data={"price": math.inf}), r"EngagementEvent\.data: non-finite number inf at \['price'\]"),
    (lambda: npc_turn(tokens=2, latency_s=math.inf), r"NpcTurn\.latency_s: expected a finite number"),
    (lambda: npc_turn(tokens=2, time_to_first_token_s=-math.inf), r"NpcTurn\.time_to_first_token_s"),
    (lambda: npc_turn(tokens=2, logprobs=[-0.5, math.nan]), r"NpcTurn\.logprobs: .*nan at index 1"),
    (lambda: npc_turn(tokens=2, full_logprobs=[math.inf, -0.5]), r"NpcTurn\.full_logprobs: .*inf at index 0"),
    (lambda: npc_turn(tokens=2, sampler={"temperature": math.nan}), r"NpcTurn\.sampler: non-finite number nan"),
    (lambda: ConversationStart("c", "n", "p", "B", "h", "b", {}, math.inf), r"ConversationStart\.time"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), NON_FINITE)
def test_the_writer_refuses_non_finite_numbers_at_append_and_keeps_what_was_written(
    tmp_path: Path, make, message: str
) -> None:
    before, after = event(index=1), event(index=2)
    with PlayLogWriter(tmp_path) as writer:
        writer.append(before)
        with pytest.raises(LogFormatError, match=message) as refused:
            writer.append(make())
        assert isinstance(refused.value, NpcrlError)
        with pytest.raises(LogFormatError, match=message):
            writer.append_many([event(index=3), make()])  # the whole batch is refused, nothing queued
        writer.append(after)
    assert list(read_log_dir(tmp_path)) == [before, after]


def test_log_probs_may_still_be_minus_infinity() -> None:
    """The log of a zero probability is a value, not damage: version-1 logs hold it (golden file)."""
    turn = npc_turn(tokens=2, full_logprobs=[-0.5, -math.inf])
    encode_record(turn)


def test_a_conversation_refuses_an_infinite_event_in_the_callers_thread(tiny_bundles, tmp_path, caplog) -> None:
    from npcrl.agent.npc_agent import AgentConfig, NpcAgent
    from npcrl.agent.persona import builtin_personas
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.runtime.sampler import SamplerConfig

    agent = NpcAgent(
        OnnxCausalLM(tiny_bundles["llama-fp32"]),
        builtin_personas()["blacksmith"],
        log_writer=PlayLogWriter(tmp_path),
        config=AgentConfig(sampler=SamplerConfig(temperature=1.0, seed=1, max_new_tokens=8), prompt_token_budget=220),
        system_prompt="You are Brom, the village blacksmith.",
    )
    talk = agent.start_conversation("p1")
    talk.respond("Hello!")
    with caplog.at_level(logging.ERROR):
        talk.record("trade", math.inf, item="sword")
        talk.record("gift", 1.0, weight=math.nan)
    talk.record("trade", 3.0, item="sword")
    agent.log_writer.close()
    assert "EngagementEvent.value: expected a finite number, got inf" in caplog.text
    assert "EngagementEvent.data: non-finite number nan at ['weight']" in caplog.text
    events = [(r.kind, r.value) for r in read_log_dir(tmp_path) if isinstance(r, EngagementEvent)]
    assert ("trade", 3.0) in events and all(math.isfinite(v) for _, v in events if v is not None)


def raw_event_frame(**changes: object) -> bytes:
    """A checksum-valid frame holding what an older writer would have let through."""
    payload = {"conversation_id": "c-1", "turn_index": 0, "kind": "rating", "value": 1.0, "time": 5.0, "data": {}}
    payload.update(changes)
    return encode_frame(KIND_ENGAGEMENT_EVENT, msgpack.packb(payload, use_bin_type=True))


def rated_conversation(cid: str) -> list[Record]:
    """Two turns, each rated (the default reward spec scales ratings by their value)."""
    records = conversation(cid, turns=2)
    for record in records:
        if isinstance(record, EngagementEvent) and record.value is None:
            record.value = 1.0
        if isinstance(record, ConversationStart):
            record.player_id = "p-" + "7" * 32  # already a pseudonym, so the writer logs it unchanged
    return records


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"value": math.inf}, "EngagementEvent.value: expected a finite number, got inf"),
        ({"value": math.nan}, "EngagementEvent.value: expected a finite number, got nan"),
        ({"data": {"x": [math.inf]}}, "EngagementEvent.data: non-finite number inf at ['x'][0]"),
        ({"turn_index": "zero"}, "EngagementEvent.turn_index: expected int"),
    ],
)
def test_the_reader_skips_a_bad_record_naming_file_and_offset_and_goes_on(
    tmp_path: Path, capsys, changes: dict[str, object], problem: str
) -> None:
    good = rated_conversation("c-1")
    head = file_header() + b"".join(encode_frame(*encode_record(r)) for r in good[:3])
    path = tmp_path / "play-1.npl"
    path.write_bytes(head + raw_event_frame(**changes) + b"".join(encode_frame(*encode_record(r)) for r in good[3:]))
    reader = LogReader(tmp_path)
    assert list(reader) == good
    s = reader.stats
    assert (s.records, s.invalid_records, s.corrupt_skipped) == (len(good), 1, 1)
    (issue,) = s.issues
    assert (issue.path, issue.offset, issue.corrupt) == (path, len(head), True)
    assert problem in issue.problem
    # Whole-directory commands go on past it.
    assert main(["rewards", str(tmp_path)]) == 0
    assert '"turns": 2' in capsys.readouterr().out
    data = load_training_data(tmp_path, default_reward_spec(), {"0123456789abcdef"}, 1000, DataConfig(), 0)
    assert data.report.invalid_records_skipped == 1 and data.report.turns_logged == 2
    assert main(["logs", "validate", str(tmp_path)]) == 1
    assert f"play-1.npl@{len(head)}: corrupt" in capsys.readouterr().out


def write_with_writer(log_dir: Path, records: list[Record]) -> Path:
    with PlayLogWriter(log_dir) as writer:
        writer.append_many(records)
    (path,) = log_dir.glob("*.npl")
    return path


def test_a_copied_file_counts_once_and_names_both_files(tmp_path: Path, capsys) -> None:
    records = rated_conversation("c-1") + rated_conversation("c-2")
    original = write_with_writer(tmp_path, records)
    copy = shutil.copy(original, tmp_path / "zz-copy.npl")
    reader = LogReader(tmp_path)
    assert list(reader) == records
    assert (reader.stats.records, reader.stats.duplicates, reader.stats.conflicts) == (len(records), len(records), 0)
    repeat = reader.stats.repeats[0]
    assert (repeat.path, repeat.first_path, repeat.offset, repeat.first_offset) == (copy, original, 12, 12)
    assert "duplicate record(s) counted once" in (reader.stats.warning() or "")

    assert main(["rewards", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert '"turns": 4' in out and '"duplicate_records": 12' in out
    assert err.startswith(f"warning: {len(records)} duplicate record(s) counted once")

    assert main(["logs", "validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"zz-copy.npl@12: conversation_start c-1: duplicate of {original.name}@12" in out
    assert "npc_turn c-1#0: duplicate of" in out and "engagement_event c-1 id " in out
    assert f"{len(records)} duplicate record(s), 0 conflicting record(s)" in out
    assert out.rstrip().endswith("OK (duplicates are counted once)")

    assert main(["logs", "stats", "--json", str(tmp_path)]) == 0
    assert '"duplicate_records": 12' in capsys.readouterr().out

    data = load_training_data(tmp_path, default_reward_spec(), {"0123456789abcdef"}, 1000, DataConfig(), 0)
    assert data.report.turns_logged == 4 and data.report.duplicate_records == len(records)
    assert "\nwarning: 12 duplicate record(s) counted once" in data.report.summary()


def test_a_concatenated_file_counts_once(tmp_path: Path, capsys) -> None:
    records = rated_conversation("c-1")
    original = write_with_writer(tmp_path / "src", records)
    both = tmp_path / "both.npl"
    both.write_bytes(original.read_bytes() * 2)  # `cat a.npl a.npl > both.npl`
    reader = LogReader(tmp_path)
    assert list(reader) == records
    s = reader.stats
    assert (s.records, s.duplicates) == (len(records), len(records))
    second = original.stat().st_size
    (seam,) = s.issues
    assert (seam.offset, seam.size) == (second, FILE_HEADER.size) and "concatenated" in seam.problem
    assert (s.repeats[0].path, s.repeats[0].offset, s.repeats[0].first_offset) == (both, second + 12, 12)
    assert main(["rewards", str(tmp_path)]) == 0
    assert '"turns": 2' in capsys.readouterr().out


def test_concatenation_beside_its_parts_counts_once(tmp_path: Path) -> None:
    first = write_with_writer(tmp_path / "a", rated_conversation("c-1"))
    second = write_with_writer(tmp_path / "b", rated_conversation("c-2"))
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    shutil.copy(first, log_dir / "a.npl")
    shutil.copy(second, log_dir / "b.npl")
    (log_dir / "c-all.npl").write_bytes(first.read_bytes() + second.read_bytes())
    reader = LogReader(log_dir)
    records = list(reader)
    assert records == rated_conversation("c-1") + rated_conversation("c-2")
    assert reader.stats.duplicates == len(records)
    assert {(r.path.name, r.first_path.name) for r in reader.stats.repeats} == {
        ("c-all.npl", "a.npl"),
        ("c-all.npl", "b.npl"),
    }


def test_logs_without_event_ids_are_deduplicated_by_content(tmp_path: Path) -> None:
    """Events written before ids existed: equal in every field, time included, is one event."""
    records = rated_conversation("c-1")
    data = file_header() + b"".join(encode_frame(*encode_record(r)) for r in records)
    (tmp_path / "a.npl").write_bytes(data)
    (tmp_path / "b.npl").write_bytes(data)
    reader = LogReader(tmp_path)
    assert list(reader) == records and reader.stats.duplicates == len(records)
    two_ratings = [event(index=1), event(index=1, time=event(index=1).time + 1)]
    (tmp_path / "c.npl").write_bytes(file_header() + b"".join(encode_frame(*encode_record(r)) for r in two_ratings))
    assert list(LogReader(tmp_path / "c.npl")) == two_ratings  # different times: two events


def test_the_same_event_appended_twice_counts_once(tmp_path: Path) -> None:
    rating = event(index=1)
    with PlayLogWriter(tmp_path) as writer:
        writer.append(rating)
        writer.append(rating)  # a retry of the same event object keeps its id
        writer.append(event(index=1))  # an equal but separate event gets an id of its own
    reader = LogReader(tmp_path)
    assert len(list(reader)) == 2 and reader.stats.duplicates == 1
    assert rating.event_id


def test_a_conflict_keeps_the_first_record_and_drops_the_conversation_from_training(tmp_path: Path, capsys) -> None:
    records = rated_conversation("c-1") + rated_conversation("c-2")
    write_with_writer(tmp_path, records)
    changed = npc_turn("c-1", 0, tokens=8, text="A different line under the same turn.")
    (tmp_path / "zz-edit.npl").write_bytes(file_header() + encode_frame(*encode_record(changed)))
    reader = LogReader(tmp_path)
    kept = [r for r in reader if isinstance(r, NpcTurn) and r.conversation_id == "c-1" and r.turn_index == 0]
    assert kept == [records[1]] and reader.stats.conflicts == 1
    assert reader.stats.conflicting_conversations == {"c-1"}

    data = load_training_data(tmp_path, default_reward_spec(), {"0123456789abcdef"}, 1000, DataConfig(), 0)
    assert data.report.dropped["conflicting_records"] == 2
    assert {t.conversation_id for t in data.train + data.holdout} == {"c-2"}
    assert "1 conflicting record(s) skipped" in data.report.summary()

    assert main(["logs", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "zz-edit.npl@12: npc_turn c-1#0: conflicts with " in out
    assert out.rstrip().endswith("CONFLICTING")


def test_a_file_copied_into_two_pooled_directories_counts_once(tmp_path: Path) -> None:
    first, second = tmp_path / "round-1", tmp_path / "round-2"
    original = write_with_writer(first, rated_conversation("c-1"))
    write_with_writer(second, rated_conversation("c-2"))
    shutil.copy(original, second / "copied.npl")
    data = load_training_data([first, second], default_reward_spec(), {"0123456789abcdef"}, 1000, DataConfig(), 0)
    assert data.report.conversations == 2 and data.report.turns_logged == 4
    assert data.report.duplicate_records == len(rated_conversation("c-1"))
    assert data.report.repeats[0].startswith("copied.npl@12: conversation_start c-1: duplicate of ")
