"""The reader, modelled on LevelDB's log_test: torn tails, corrupt frames, resync, bounded memory."""

from __future__ import annotations

import random
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from playlog_helpers import build_log, conversation, event, npc_turn, write_log

from npcrl.errors import LogFormatError
from npcrl.playlog import (
    FORMAT_VERSION,
    LogReader,
    PlayLogWriter,
    Record,
    list_log_files,
    read_log_dir,
    read_log_file,
)
from npcrl.playlog.framing import FILE_HEADER, FRAME_HEADER, MAGIC, MAX_PAYLOAD_BYTES, encode_frame, file_header

RECORDS = conversation("conv-1", turns=2) + [event("conv-1", 2, i) for i in range(3)]
SMALL = conversation("c", turns=1) + [event("c", 1, 9, data={})]  # every kind, for the exhaustive tests


def read(path: Path) -> tuple[list[Record], LogReader]:
    reader = LogReader(path)
    return list(reader), reader


def test_reads_back_every_record(tmp_path: Path) -> None:
    data, _ = build_log(RECORDS)
    records, reader = read(write_log(tmp_path / "a.npl", data))
    assert records == RECORDS
    s = reader.stats
    assert (s.files, s.records, s.corrupt_skipped, s.torn_tail_bytes, s.unknown_kinds) == (1, len(RECORDS), 0, 0, 0)


def test_truncation_at_every_offset_loses_only_the_torn_record(tmp_path: Path) -> None:
    data, spans = build_log(SMALL)
    path = tmp_path / "t.npl"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        records, reader = read(path)
        complete = [r for r, (_, end) in zip(SMALL, spans, strict=True) if end <= cut]
        assert records == complete, cut
        last_end = max([end for _, end in spans if end <= cut], default=FILE_HEADER.size)
        expected_torn = cut if cut < FILE_HEADER.size else cut - last_end
        assert reader.stats.torn_tail_bytes == expected_torn, cut
        assert reader.stats.corrupt_skipped == 0, cut


def _flip(data: bytes, offset: int, value: int | None = None) -> bytes:
    out = bytearray(data)
    out[offset] = out[offset] ^ 0xFF if value is None else value
    return bytes(out)


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, offset, value)
    return bytes(out)


DAMAGE = {
    "crc-byte": lambda d, s, e: _flip(d, s + 4),
    "crc-zeroed": lambda d, s, e: _set_u32(d, s + 4, 0),
    "length-huge": lambda d, s, e: _set_u32(d, s, 0xFFFFFFFF),
    "length-just-over-limit": lambda d, s, e: _set_u32(d, s, MAX_PAYLOAD_BYTES + 1),
    "length-at-limit": lambda d, s, e: _set_u32(d, s, MAX_PAYLOAD_BYTES),
    "length-past-eof": lambda d, s, e: _set_u32(d, s, len(d)),
    "length-shorter": lambda d, s, e: _set_u32(d, s, e - s - FRAME_HEADER.size - 1),
    "length-longer": lambda d, s, e: _set_u32(d, s, e - s - FRAME_HEADER.size + 1),
    "length-zero": lambda d, s, e: _set_u32(d, s, 0),
    "kind-zero": lambda d, s, e: _flip(d, s + 8, 0),
    "kind-other-known": lambda d, s, e: _flip(d, s + 8, 4 if d[s + 8] != 4 else 1),
    "kind-unknown": lambda d, s, e: _flip(d, s + 8, 200),
    "payload-first-byte": lambda d, s, e: _flip(d, s + FRAME_HEADER.size),
    "payload-middle": lambda d, s, e: _flip(d, (s + FRAME_HEADER.size + e) // 2),
    "payload-last-byte": lambda d, s, e: _flip(d, e - 1),
    "frame-zeroed": lambda d, s, e: d[:s] + bytes(e - s) + d[e:],
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
@pytest.mark.parametrize("victim", [0, 3, len(RECORDS) - 2], ids=["first", "middle", "second-to-last"])
def test_one_damaged_frame_skips_exactly_that_record(tmp_path: Path, damage: str, victim: int) -> None:
    data, spans = build_log(RECORDS)
    start, end = spans[victim]
    damaged = DAMAGE[damage](data, start, end)
    records, reader = read(write_log(tmp_path / "d.npl", damaged))
    assert records == RECORDS[:victim] + RECORDS[victim + 1 :]
    assert reader.stats.corrupt_skipped == 1
    assert reader.stats.torn_tail_bytes == 0
    issue = reader.stats.issues[0]
    assert issue.corrupt and issue.offset == start and issue.size == end - start


@pytest.mark.parametrize("damage", ["crc-byte", "length-huge", "kind-zero", "payload-middle"])
def test_damaged_last_frame_is_corrupt_not_torn(tmp_path: Path, damage: str) -> None:
    data, spans = build_log(RECORDS)
    start, end = spans[-1]
    records, reader = read(write_log(tmp_path / "d.npl", DAMAGE[damage](data, start, end)))
    assert records == RECORDS[:-1]
    assert (reader.stats.corrupt_skipped, reader.stats.corrupt_bytes, reader.stats.torn_tail_bytes) == (
        1,
        end - start,
        0,
    )


def test_last_frame_length_past_eof_reads_as_torn_tail(tmp_path: Path) -> None:
    data, spans = build_log(RECORDS)
    start, end = spans[-1]
    records, reader = read(write_log(tmp_path / "d.npl", _set_u32(data, start, 10_000)))
    assert records == RECORDS[:-1]
    assert (reader.stats.corrupt_skipped, reader.stats.torn_tail_bytes) == (0, end - start)


def test_every_single_byte_flip_loses_exactly_its_own_record(tmp_path: Path) -> None:
    data, spans = build_log(SMALL)
    path = tmp_path / "f.npl"
    for offset in range(FILE_HEADER.size, len(data)):
        victim = next(i for i, (s, e) in enumerate(spans) if s <= offset < e)
        damaged = bytearray(data)
        damaged[offset] ^= 0x01 if offset % 2 else 0x80  # low and high bits, half the reads
        path.write_bytes(damaged)
        records, _ = read(path)
        assert records == SMALL[:victim] + SMALL[victim + 1 :], offset


def test_garbage_between_records_is_skipped_in_one_stretch(tmp_path: Path) -> None:
    data, spans = build_log(RECORDS)
    cut = spans[3][0]
    garbage = random.Random(3).randbytes(4 * 1024 * 1024)
    path = write_log(tmp_path / "g.npl", data[:cut] + garbage + data[cut:])
    tracemalloc.start()
    try:
        began = time.perf_counter()
        records, reader = read(path)
        elapsed = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == RECORDS
    assert (reader.stats.corrupt_skipped, reader.stats.corrupt_bytes) == (1, len(garbage))
    assert peak < 8 * 1024 * 1024, peak  # a window of about one chunk plus one maximal frame
    assert elapsed < 120, elapsed  # a hang guard: a rescan per byte would take hours, not seconds


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x7FFFFFFF, MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES])
def test_huge_length_field_allocates_nothing_big(tmp_path: Path, length: int) -> None:
    data, spans = build_log(RECORDS)
    path = write_log(tmp_path / "h.npl", _set_u32(data, spans[1][0], length))
    tracemalloc.start()
    try:
        records, reader = read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == RECORDS[:1] + RECORDS[2:]
    assert peak < 256 * 1024, peak


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    # What ext4/XFS can leave after a crash: the file size grew but the data never landed.
    data, _ = build_log(RECORDS)
    records, reader = read(write_log(tmp_path / "z.npl", data + bytes(4096)))
    assert records == RECORDS
    assert (reader.stats.corrupt_skipped, reader.stats.torn_tail_bytes) == (0, 4096)


def test_unknown_kinds_are_skipped_and_counted(tmp_path: Path) -> None:
    data, spans = build_log(RECORDS)
    future = encode_frame(42, msgpack.packb({"new": "thing"})) + encode_frame(255, msgpack.packb({}))
    records, reader = read(write_log(tmp_path / "u.npl", data[: spans[2][0]] + future + data[spans[2][0] :]))
    assert records == RECORDS
    assert (reader.stats.unknown_kinds, reader.stats.corrupt_skipped) == (2, 0)


def test_valid_frame_with_bad_payload_is_skipped_as_corrupt(tmp_path: Path) -> None:
    data, spans = build_log(RECORDS)
    bad = encode_frame(2, msgpack.packb({"conversation_id": "x"}))  # an NpcTurn missing most fields
    records, reader = read(write_log(tmp_path / "p.npl", data[: spans[1][0]] + bad + data[spans[1][0] :]))
    assert records == RECORDS
    assert reader.stats.corrupt_skipped == 1
    assert "missing field" in reader.stats.issues[0].problem


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"NOTALOG!" + struct.pack("<HH", 1, 0), "not a play log"),
        (b"npcrllog" + struct.pack("<HH", 1, 0), "not a play log"),
        (b"NPC" + b"X" * 20, "not a play log"),
        (MAGIC + struct.pack("<HH", 2, 0), "format version 2 is not supported"),
        (MAGIC + struct.pack("<HH", 0, 0), "format version 0 is not supported"),
    ],
    ids=["bad-magic", "lowercase-magic", "bad-magic-prefix", "future-version", "version-zero"],
)
def test_bad_header_names_the_file(tmp_path: Path, header: bytes, message: str) -> None:
    path = write_log(tmp_path / "bad.npl", header + build_log(RECORDS)[0][FILE_HEADER.size :])
    with pytest.raises(LogFormatError, match=message) as info:
        list(read_log_file(path))
    assert str(path) in str(info.value)


def test_reserved_header_field_is_ignored(tmp_path: Path) -> None:
    data = MAGIC + struct.pack("<HH", FORMAT_VERSION, 0xBEEF) + build_log(RECORDS)[0][FILE_HEADER.size :]
    assert list(read_log_file(write_log(tmp_path / "r.npl", data))) == RECORDS


def test_directory_reads_npl_files_in_name_order(tmp_path: Path) -> None:
    a, _ = build_log(RECORDS[:3])
    b, _ = build_log(RECORDS[3:])
    write_log(tmp_path / "play-2-000001.npl", b)
    write_log(tmp_path / "play-1-000000.npl", a)
    write_log(tmp_path / "notes.txt", b"not a log")
    write_log(tmp_path / "play.npl.bak", b"not a log either")
    (tmp_path / "sub.npl").mkdir()
    reader = LogReader(tmp_path)
    assert list(reader) == RECORDS
    assert reader.stats.files == 2
    assert list(read_log_dir(tmp_path)) == RECORDS
    assert [e.path.name for e in reader.entries()][:1] == ["play-1-000000.npl"]


def test_path_validation(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="does not exist"):
        read_log_dir(tmp_path / "missing")
    with pytest.raises(LogFormatError, match="does not exist"):
        LogReader(tmp_path / "missing")
    write_log(tmp_path / "x.json", b"{}")
    with pytest.raises(LogFormatError, match="end in .npl"):
        read_log_file(tmp_path / "x.json")
    with pytest.raises(LogFormatError, match="not a directory"):
        read_log_dir(tmp_path / "x.json")
    with pytest.raises(LogFormatError, match="is a directory"):
        read_log_file(tmp_path)
    with pytest.raises(LogFormatError, match="follow works on one log file"):
        LogReader(tmp_path, follow=True)
    assert list(read_log_dir(tmp_path)) == []


def test_entries_report_file_and_offset(tmp_path: Path) -> None:
    data, spans = build_log(RECORDS)
    entries = list(LogReader(write_log(tmp_path / "e.npl", data)).entries())
    assert [e.offset for e in entries] == [s for s, _ in spans]
    assert [e.record for e in entries] == RECORDS


def test_follow_waits_for_frames_written_in_pieces(tmp_path: Path) -> None:
    data, _ = build_log(RECORDS)
    path = tmp_path / "live.npl"
    path.write_bytes(b"")
    rng = random.Random(5)

    def dribble() -> None:
        with path.open("ab", buffering=0) as f:
            pos = 0
            while pos < len(data):
                step = rng.randint(1, 40)
                f.write(data[pos : pos + step])
                pos += step
                time.sleep(0.001)

    writer = threading.Thread(target=dribble)
    writer.start()
    try:
        reader = LogReader(path, follow=True, poll_interval_s=0.002, idle_timeout_s=5.0)
        got = []
        for record in reader:
            got.append(record)
            if len(got) == len(RECORDS):
                break
    finally:
        writer.join()
    assert got == RECORDS
    assert reader.stats.corrupt_skipped == 0


def test_follow_stops_after_idle_timeout_and_reports_the_torn_tail(tmp_path: Path) -> None:
    data, spans = build_log(RECORDS)
    path = write_log(tmp_path / "idle.npl", data[: spans[2][0] + 5])
    began = time.monotonic()
    reader = LogReader(path, follow=True, poll_interval_s=0.01, idle_timeout_s=0.2)
    assert list(reader) == RECORDS[:2]
    assert 0.2 <= time.monotonic() - began < 120  # waited the idle timeout; the upper bound only guards a hang
    assert reader.stats.torn_tail_bytes == 5


def test_rereading_a_growing_file_always_yields_a_prefix(tmp_path: Path) -> None:
    records = [npc_turn("c", i, tokens=30) for i in range(200)]
    data, _ = build_log(records)
    path = tmp_path / "grow.npl"
    path.write_bytes(b"")
    done = threading.Event()

    def grow() -> None:
        with path.open("ab", buffering=0) as f:
            for pos in range(0, len(data), 997):  # chunk size unrelated to frame boundaries
                f.write(data[pos : pos + 997])
        done.set()

    writer = threading.Thread(target=grow)
    writer.start()
    seen = 0
    while True:
        finished = done.is_set()
        got = list(read_log_file(path))
        assert got == records[: len(got)]
        assert len(got) >= seen
        seen = len(got)
        if finished:
            break
    writer.join()
    assert seen == len(records)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    records, reader = read(write_log(tmp_path / "e.npl", b""))
    assert (records, reader.stats.torn_tail_bytes) == ([], 0)
    records, reader = read(write_log(tmp_path / "h.npl", file_header()))
    assert (records, reader.stats.torn_tail_bytes, reader.stats.corrupt_skipped) == ([], 0, 0)
    records, reader = read(write_log(tmp_path / "p.npl", file_header()[:7]))
    assert (records, reader.stats.torn_tail_bytes) == ([], 7)


def test_follow_a_live_writer_sees_every_record_in_order(tmp_path: Path) -> None:
    expected = [event("live", 0, i) for i in range(500)]
    with PlayLogWriter(tmp_path) as writer:
        (path,) = list_log_files(tmp_path)  # created with its header at construction

        def play() -> None:
            for i, record in enumerate(expected):
                writer.append(record)
                if i % 50 == 0:
                    time.sleep(0.005)

        player = threading.Thread(target=play)
        player.start()
        got = []
        for record in read_log_file(path, follow=True, poll_interval_s=0.002, idle_timeout_s=5.0):
            got.append(record)
            assert got == expected[: len(got)]
            if len(got) == len(expected):
                break
        player.join()
    assert got == expected
