"""The writer: never blocks, rotates, never overwrites, survives SIGKILL, takes concurrent appends."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from playlog_helpers import conversation, event, event_indices, npc_turn

from npcrl.errors import LogFormatError
from npcrl.playlog import ConversationStart, EngagementEvent, LogReader, PlayLogWriter, list_log_files, read_log_dir
from npcrl.playlog.framing import FILE_HEADER, MAGIC
from npcrl.privacy.pseudonym import load_key, pseudonym

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("key_file")  # a fresh key per test (tests/conftest.py)


@pytest.mark.parametrize("sync", ["flush", "fsync_interval", "always"])
def test_every_sync_policy_writes_a_readable_log(tmp_path: Path, sync: str, key_file: Path) -> None:
    records = conversation("c", turns=3)
    with PlayLogWriter(tmp_path, sync=sync, fsync_interval_s=0.01) as writer:  # type: ignore[arg-type]
        writer.append_many(records[:3])
        for record in records[3:]:
            writer.append(record)
        assert writer.flush()
        key = load_key(key_file)  # the writer made it: the player id is logged as its pseudonym
        logged = [
            dataclasses.replace(r, player_id=pseudonym(r.player_id, key)) if isinstance(r, ConversationStart) else r
            for r in records
        ]
        assert list(read_log_dir(tmp_path)) == logged  # visible before close
    s = writer.stats
    assert (s.records_written, s.dropped, s.failed, s.errors, s.files) == (len(records), 0, 0, 0, 1)
    assert s.bytes_written == sum(p.stat().st_size for p in list_log_files(tmp_path))


def test_file_names_and_header(tmp_path: Path) -> None:
    with PlayLogWriter(tmp_path / "new" / "dir", prefix="village-1") as writer:
        writer.append(event())
    (path,) = list_log_files(tmp_path / "new" / "dir")
    prefix, stamp, seq = path.stem.rsplit("-", 2)
    assert prefix == "village-1" and len(stamp) == 16 and stamp.endswith("Z") and seq == "000000"
    assert path.read_bytes()[: len(MAGIC)] == MAGIC


def test_append_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    writer = PlayLogWriter(tmp_path, queue_size=4)
    stalled, release = threading.Event(), threading.Event()
    real_write = writer._files.write

    def hanging_disk(frames: list[bytes]) -> None:
        stalled.set()
        release.wait()
        real_write(frames)

    writer._files.write = hanging_disk  # type: ignore[method-assign]
    writer.append(event(index=0))
    assert stalled.wait(120)  # the writer thread now hangs in a write (a hang guard, not a timing)
    for i in range(1, 201):  # all return while the disk hangs: an append that waited would never return
        writer.append(event(index=i))
    assert (writer.stats.dropped, writer.stats.queued) == (196, 4)
    release.set()
    writer.close()
    assert (writer.stats.records_written, writer.stats.dropped) == (5, 196)
    assert event_indices(read_log_dir(tmp_path)) == [0, 1, 2, 3, 4]


def test_append_many_keeps_the_earliest_when_the_queue_is_full(tmp_path: Path) -> None:
    writer = PlayLogWriter(tmp_path, queue_size=10)
    release = threading.Event()
    real_write = writer._files.write

    def hanging_disk(frames: list[bytes]) -> None:
        release.wait()
        real_write(frames)

    writer._files.write = hanging_disk  # type: ignore[method-assign]
    writer.append_many([event(index=i) for i in range(25)])
    release.set()
    writer.close()
    got = event_indices(read_log_dir(tmp_path))
    assert got == list(range(len(got))) and len(got) == 10
    assert writer.stats.dropped == 15


def test_a_bad_record_raises_at_the_call_and_queues_nothing(tmp_path: Path) -> None:
    with PlayLogWriter(tmp_path) as writer:
        with pytest.raises(LogFormatError, match="EngagementEvent.turn_index"):
            writer.append(event(turn_index="zero"))  # type: ignore[arg-type]
        with pytest.raises(LogFormatError, match="must have one length"):
            writer.append_many([event(), npc_turn(tokens=3, logprobs=[])])
        with pytest.raises(LogFormatError, match="not a play-log record"):
            writer.append({"kind": "reply"})  # type: ignore[arg-type]
    assert list(read_log_dir(tmp_path)) == []
    with pytest.raises(LogFormatError, match="closed"):
        writer.append(event())
    writer.close()  # idempotent


def test_rotation_by_size(tmp_path: Path) -> None:
    records = [npc_turn("c", i, tokens=20) for i in range(60)]
    with PlayLogWriter(tmp_path, max_file_bytes=2048) as writer:
        for record in records:
            writer.append(record)
    files = list_log_files(tmp_path)
    assert len(files) == writer.stats.files > 5
    assert all(p.stat().st_size <= 2048 for p in files)
    assert [p.name.rsplit("-", 1)[1] for p in files] == [f"{i:06d}.npl" for i in range(len(files))]
    assert list(read_log_dir(tmp_path)) == records


def test_a_record_bigger_than_max_file_bytes_gets_its_own_file(tmp_path: Path) -> None:
    big = npc_turn(tokens=500)
    with PlayLogWriter(tmp_path, max_file_bytes=1024) as writer:
        writer.append_many([event(index=0), big, event(index=1)])
    sizes = [p.stat().st_size for p in list_log_files(tmp_path)]
    assert len(sizes) == 3 and sizes[1] > 1024
    assert list(read_log_dir(tmp_path)) == [event(index=0), big, event(index=1)]


def test_never_overwrites_existing_files(tmp_path: Path) -> None:
    # Occupy every name the writer could pick in the next few seconds.
    now = time.time()
    occupied = {}
    for second in range(-1, 4):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + second))
        for seq in range(3):
            path = tmp_path / f"play-{stamp}-{seq:06d}.npl"
            path.write_bytes(b"someone else's data " + path.name.encode())
            occupied[path] = path.read_bytes()
    with PlayLogWriter(tmp_path) as writer:
        writer.append(event())
    for path, content in occupied.items():
        assert path.read_bytes() == content
    created = [p for p in tmp_path.iterdir() if p not in occupied]
    assert len(created) == 1 and created[0].name.endswith("-000003.npl")


def test_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "logs"
    target.write_text("I am a file")
    with pytest.raises(LogFormatError, match=f"{target} exists and is not a directory"):
        PlayLogWriter(target)
    with pytest.raises(LogFormatError, match="cannot create play-log directory"):
        PlayLogWriter(target / "sub")
    assert target.read_text() == "I am a file"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sync": "sometimes"}, "sync must be one of"),
        ({"max_file_bytes": FILE_HEADER.size}, "max_file_bytes"),
        ({"queue_size": 0}, "queue_size"),
        ({"fsync_interval_s": 0}, "fsync_interval_s"),
        ({"prefix": "../escape"}, "prefix"),
        ({"prefix": ""}, "prefix"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        PlayLogWriter(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_concurrent_appends_from_several_threads_all_land(tmp_path: Path) -> None:
    threads, per_thread = 8, 2000
    writer = PlayLogWriter(tmp_path, max_file_bytes=64 * 1024)
    start = threading.Barrier(threads)

    def play(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            writer.append(event(f"thread-{t}", 0, i))

    workers = [threading.Thread(target=play, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    writer.close()
    assert (writer.stats.records_written, writer.stats.dropped) == (threads * per_thread, 0)
    by_thread: dict[str, list[int]] = {}
    for record in read_log_dir(tmp_path):
        assert isinstance(record, EngagementEvent)
        by_thread.setdefault(record.conversation_id, []).append(record.data["index"])
    assert by_thread == {f"thread-{t}": list(range(per_thread)) for t in range(threads)}


def test_io_errors_are_counted_and_raised_by_flush_and_the_writer_recovers(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    writer = PlayLogWriter(logs, max_file_bytes=1024)
    writer.append(event(index=0))
    writer.flush()
    shutil.rmtree(logs)  # the next rotation cannot create its file
    for i in range(1, 30):
        writer.append(event(index=i))
    with pytest.raises(LogFormatError, match="I/O error"):
        writer.flush()
    assert writer.stats.failed > 0 and writer.stats.errors > 0 and "No such file" in (writer.stats.last_error or "")
    writer.flush()  # errors are reported once
    logs.mkdir()
    writer.append(event(index=99))
    writer.close()
    assert event_indices(read_log_dir(logs)) == [99]


def test_fsync_interval_syncs_without_further_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[float] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(time.monotonic())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    with PlayLogWriter(tmp_path, sync="fsync_interval", fsync_interval_s=0.05) as writer:
        synced.clear()
        writer.append(event())
        hang_guard = time.monotonic() + 120
        while not synced and time.monotonic() < hang_guard:
            time.sleep(0.01)
        assert len(synced) >= 1  # the interval timer fired with no append to wake the thread
        before = len(synced)
        writer.flush()  # nothing new to sync
        assert len(synced) == before


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from npcrl.playlog import EngagementEvent, PlayLogWriter
    writer = PlayLogWriter(sys.argv[1], max_file_bytes=16 * 1024)
    i = 0
    while True:
        writer.append(EngagementEvent("kill", 0, "reply", float(i), time.time(), {"i": i}))
        i += 1
        if i % 50 == 0:
            writer.flush()
            print(i, flush=True)
    """
)


def test_sigkill_mid_stream_leaves_a_readable_log(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    flushed = 0
    try:
        while flushed < 2000:
            line = proc.stdout.readline()
            assert line, "writer process died"
            flushed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    reader = LogReader(tmp_path)
    indices = []
    for record in reader:
        assert isinstance(record, EngagementEvent)
        indices.append(record.data["i"])
    assert indices == list(range(len(indices)))  # a gapless prefix of what was appended
    assert len(indices) >= flushed
    assert reader.stats.corrupt_skipped == 0
    assert reader.stats.files > 1


def test_importing_playlog_pulls_in_neither_torch_nor_pygame() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['pygame'] = None\n"
        "import npcrl.playlog, npcrl.cli.logs\n"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
