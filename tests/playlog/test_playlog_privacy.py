"""Privacy of play logs on disk: pseudonymous player ids, private files, purge by age and by player."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import filelock
import pytest
from playlog_helpers import build_log, event, npc_turn, write_log

from npcrl.errors import LogFormatError
from npcrl.playlog import ConversationEnd, ConversationStart, LogReader, PlayLogWriter, Record, purge_io
from npcrl.playlog.purge import PurgeRequest, purge_logs
from npcrl.playlog.reader import list_log_files
from npcrl.privacy.pseudonym import PseudonymKeyError, is_pseudonym, load_key, load_or_create_key, pseudonym

KEY = bytes(range(32))
DAY = 86400.0
NOW = 1_800_000_000.0
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("key_file")  # a fresh key per test (tests/conftest.py)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def start(cid: str, player: str, when: float) -> ConversationStart:
    return ConversationStart(cid, "brom", player, "Brom", "ab" * 32, "0123456789abcdef", {}, when)


def talk(cid: str, player: str, when: float, turns: int = 2) -> list[Record]:
    records: list[Record] = [start(cid, player, when)]
    for turn in range(turns):
        records.append(npc_turn(cid, turn, tokens=4, time=when + turn + 0.5))
        records.append(event(cid, turn, turn, time=when + turn + 0.75))
    return records + [ConversationEnd(cid, "done", when + 60)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def frames(records: Sequence[Record]) -> list[bytes]:
    data, spans = build_log(records)
    return [data[a:b] for a, b in spans]


def write_files(directory: Path, files: dict[str, Sequence[Record]]) -> dict[str, list[bytes]]:
    """Hand-built log files; returns each file's frames, for byte-level comparisons."""
    directory.mkdir(exist_ok=True)
    out = {}
    for name, records in files.items():
        write_log(directory / name, build_log(records)[0])
        out[name] = frames(records)
    return out


def frames_on_disk(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [
        data[e.offset : e.offset + 9 + int.from_bytes(data[e.offset : e.offset + 4], "little")]
        for e in LogReader(path).entries()
    ]


# -- pseudonyms -------------------------------------------------------------------------------


def test_a_written_log_never_holds_the_raw_player_id(tmp_path: Path, key_file: Path) -> None:
    raw = "steam:76561198000000042"
    already = pseudonym("someone", KEY)
    records = talk("c-1", raw, 1.7e9) + talk("c-2", already, 1.7e9)
    with PlayLogWriter(tmp_path / "explicit", pseudonym_key=KEY, max_file_bytes=600) as writer:
        writer.append(records[0])
        writer.append_many(records[1:])
    with PlayLogWriter(tmp_path / "default") as writer:
        writer.append_many(records)
    for directory, key in ((tmp_path / "explicit", KEY), (tmp_path / "default", load_key(key_file))):
        files = list_log_files(directory)
        assert len(files) >= 1
        for path in files:
            assert raw.encode() not in path.read_bytes()
        starts = [r for r in LogReader(directory) if isinstance(r, ConversationStart)]
        assert [s.player_id for s in starts] == [pseudonym(raw, key), already]
    first = records[0]
    assert isinstance(first, ConversationStart) and first.player_id == raw  # the caller's record is not changed


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    other = bytes(reversed(KEY))
    first = pseudonym("player-7", KEY)
    assert first == pseudonym("player-7", KEY) and is_pseudonym(first) and len(first) == 34
    assert first != pseudonym("player-7", other)
    assert first != pseudonym("player-8", KEY)
    assert not is_pseudonym("player-7") and not is_pseudonym(first.upper())
    with pytest.raises(PseudonymKeyError, match="too short"):
        pseudonym("player-7", b"short")


def test_the_key_file_is_created_private_and_atomically_once(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "config" / "npcrl" / "pseudonym.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) == 32
    assert mode(path) == 0o600 and mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["pseudonym.key"]  # no temporary file left
    assert load_key(path) == keys[0]


@pytest.mark.parametrize(
    ("content", "file_mode", "message"),
    [
        (bytes(32), 0o644, "mode 0644, open to group or others"),
        (bytes(32), 0o640, "mode 0640"),
        (bytes(31), 0o600, "holds 31 bytes, expected exactly 32"),
        (bytes(33), 0o600, "more than 32"),
        (b"", 0o600, "holds 0 bytes"),
    ],
)
def test_a_bad_key_file_is_refused(tmp_path: Path, content: bytes, file_mode: int, message: str) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    path.chmod(file_mode)
    for load in (load_key, load_or_create_key):
        with pytest.raises(PseudonymKeyError, match=message) as caught:
            load(path)
        assert str(path) in str(caught.value)
    assert path.read_bytes() == content  # never replaced
    with pytest.raises(PseudonymKeyError, match=f"{tmp_path / 'missing.key'}: no pseudonym key file"):
        load_key(tmp_path / "missing.key")
    with pytest.raises(PseudonymKeyError, match="regular file"):
        load_key(tmp_path)


def test_the_default_key_may_not_sit_inside_the_log_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPCRL_KEY_FILE", str(tmp_path / "logs" / "pseudonym.key"))
    with pytest.raises(PseudonymKeyError, match="inside the play-log directory"):
        PlayLogWriter(tmp_path / "logs")
    assert not (tmp_path / "logs" / "pseudonym.key").exists()


# -- files on disk ----------------------------------------------------------------------------


def test_log_files_are_0600_and_directories_0700_under_a_permissive_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    logs = tmp_path / "saves" / "village" / "logs"
    with PlayLogWriter(logs, max_file_bytes=600, sync="always") as writer:
        writer.append_many(talk("c-1", "player-7", 1.7e9, turns=4))
    files = list_log_files(logs)
    assert len(files) >= 3  # rotation creates files the same way
    assert {mode(p) for p in files} == {0o600}
    assert [mode(d) for d in (logs, logs.parent, logs.parent.parent)] == [0o700] * 3
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    PlayLogWriter(existing).close()  # an existing directory keeps its mode; its files are private
    assert mode(existing) == 0o755 and {mode(p) for p in list_log_files(existing)} == {0o600}


# -- purge ------------------------------------------------------------------------------------


def age_fixture(directory: Path) -> dict[str, list[bytes]]:
    """Old conversation o-1 spans two files; n-1 is recent; o-2 is old with no start (first record decides)."""
    old, new = NOW - 40 * DAY, NOW - 2 * DAY
    o1, n1, o2 = talk("o-1", "p-a", old, turns=3), talk("n-1", "p-b", new), talk("o-2", "p-c", old)[1:]
    return write_files(
        directory,
        {
            "play-1-000000.npl": o1[:4] + n1[:3],
            "play-1-000001.npl": o1[4:] + n1[3:],
            "play-2-000000.npl": o2,
            "play-3-000000.npl": talk("n-2", "p-d", new),
        },
    )


def test_purge_by_age_removes_exactly_the_old_conversations_across_files(
    tmp_path: Path, permissive_umask: None
) -> None:
    before = age_fixture(tmp_path)
    untouched = tmp_path / "play-3-000000.npl"
    stamp = untouched.stat()
    report = purge_logs(tmp_path, PurgeRequest(older_than_s=30 * DAY, now=NOW))
    assert report.complete and report.conversations == 2
    statuses = {f.path.name: (f.status, dict(f.removed)) for f in report.files}
    assert statuses == {
        "play-1-000000.npl": ("rewritten", {"conversation_start": 1, "npc_turn": 2, "engagement_event": 1}),
        "play-1-000001.npl": ("rewritten", {"npc_turn": 1, "engagement_event": 2, "conversation_end": 1}),
        "play-2-000000.npl": ("deleted", {"npc_turn": 2, "engagement_event": 2, "conversation_end": 1}),
    }
    # Every other record is still there, byte for byte and in order; the file without matches is untouched.
    assert frames_on_disk(tmp_path / "play-1-000000.npl") == before["play-1-000000.npl"][4:]
    assert frames_on_disk(tmp_path / "play-1-000001.npl") == before["play-1-000001.npl"][4:]
    assert not (tmp_path / "play-2-000000.npl").exists()
    assert untouched.stat().st_mtime_ns == stamp.st_mtime_ns and untouched.stat().st_ino == stamp.st_ino
    assert mode(tmp_path / "play-1-000000.npl") == 0o600
    assert {r.conversation_id for r in LogReader(tmp_path)} == {"n-1", "n-2"}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".purge.lock")) == [
        "play-1-000000.npl",
        "play-1-000001.npl",
        "play-3-000000.npl",
    ]
    again = purge_logs(tmp_path, PurgeRequest(older_than_s=30 * DAY, now=NOW))
    assert again.complete and again.files == []


def test_purge_by_player_erases_every_record_of_every_conversation_of_that_player(tmp_path: Path) -> None:
    target = pseudonym("player-7", KEY)
    legacy = "player-7"  # logs from before pseudonyms hold the raw id
    garbage = b"\x07" * 40  # an unreadable stretch stays as it is
    first = build_log(talk("a-1", target, NOW) + talk("b-1", "p-other", NOW))[0]
    (tmp_path / "play-1.npl").write_bytes(first + garbage)
    write_files(tmp_path, {"play-2.npl": talk("a-2", legacy, NOW)[:3], "play-3.npl": talk("a-2", legacy, NOW)[3:]})
    kept = frames(talk("b-1", "p-other", NOW))
    report = purge_logs(tmp_path, PurgeRequest(player_ids=frozenset({target, legacy})))
    assert report.complete and report.conversations == 2
    assert sum(report.removed().values()) == 12
    data = (tmp_path / "play-1.npl").read_bytes()
    assert data == first[:12] + b"".join(kept) + garbage
    assert report.unattributed == {tmp_path / "play-1.npl": 1}
    assert not (tmp_path / "play-2.npl").exists() and not (tmp_path / "play-3.npl").exists()
    assert {r.conversation_id for r in LogReader(tmp_path)} == {"b-1"}


def test_purge_leaves_a_file_a_writer_holds_and_finishes_it_next_time(tmp_path: Path, key_file: Path) -> None:
    writer = PlayLogWriter(tmp_path)
    records = talk("c-1", "player-7", NOW)
    writer.append_many(records[:3])
    assert writer.flush(120)
    live = writer.stats.current_file
    assert live is not None
    target = pseudonym("player-7", load_or_create_key(key_file))  # the writer has made it
    erase = PurgeRequest(player_ids=frozenset({target, "player-7"}))
    write_files(tmp_path, {"play-0-older.npl": talk("c-0", target, NOW)})
    dry = purge_logs(tmp_path, erase, dry_run=True)
    assert {f.path.name: f.status for f in dry.files} == {"play-0-older.npl": "would delete", live.name: "in use"}
    assert (tmp_path / "play-0-older.npl").exists() and not (tmp_path / purge_io.JOURNAL_NAME).exists()
    report = purge_logs(tmp_path, erase)
    assert not report.complete and report.left == {"c-1"}
    assert {f.path.name: f.status for f in report.files} == {"play-0-older.npl": "deleted", live.name: "in use"}
    assert len(list(LogReader(live))) == 3  # the writer's file is untouched
    writer.append_many(records[3:])
    writer.close()
    # The next purge, whatever it is asked, finishes the conversation the last one chose.
    later = purge_logs(tmp_path, PurgeRequest(older_than_s=1000 * DAY, now=NOW))
    assert later.complete and later.from_journal == 1
    assert list(LogReader(tmp_path)) == [] and not (tmp_path / purge_io.JOURNAL_NAME).exists()


# Purge in a child process that dies (no cleanup of any kind runs) just before renaming its rewrite.
CRASH_BEFORE_RENAME = """
import os, sys
from pathlib import Path
from npcrl.playlog import purge_io
from npcrl.playlog.purge import PurgeRequest, purge_logs

real_replace = os.replace

def replace_or_die(src, dst):
    if str(src).endswith(purge_io.TEMP_SUFFIX):
        os._exit(17)
    real_replace(src, dst)

os.replace = replace_or_die
purge_logs(Path(sys.argv[1]), PurgeRequest(older_than_s=float(sys.argv[2]), now=float(sys.argv[3])))
"""


def test_a_crash_before_the_rename_keeps_the_old_file_and_the_next_purge_cleans_up(tmp_path: Path) -> None:
    age_fixture(tmp_path)
    original = {p.name: p.read_bytes() for p in list_log_files(tmp_path)}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(tmp_path), str(30 * DAY), str(NOW)]
    child = subprocess.run([sys.executable, "-c", CRASH_BEFORE_RENAME, *args], env=env, timeout=600, check=False)
    assert child.returncode == 17
    assert {p.name: p.read_bytes() for p in list_log_files(tmp_path)} == original
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(purge_io.TEMP_SUFFIX)]
    assert len(temps) == 1 and (tmp_path / purge_io.JOURNAL_NAME).exists()
    # A later purge (of anything) removes the temporary file and finishes the crashed one's work.
    report = purge_logs(tmp_path, PurgeRequest(player_ids=frozenset({"nobody"})))
    assert report.complete and report.temps_removed == temps and report.from_journal == 2
    assert not any(p.name.endswith(purge_io.TEMP_SUFFIX) for p in tmp_path.iterdir())
    assert {r.conversation_id for r in LogReader(tmp_path)} == {"n-1", "n-2"}


def test_purge_needs_a_directory_and_something_to_drop(tmp_path: Path) -> None:
    write_files(tmp_path, {"play-1.npl": talk("c-1", "p-a", NOW)})
    with pytest.raises(LogFormatError, match="give an age"):
        purge_logs(tmp_path, PurgeRequest())
    with pytest.raises(LogFormatError, match="purge works on a play-log directory"):
        purge_logs(tmp_path / "play-1.npl", PurgeRequest(older_than_s=DAY))


def test_one_purge_at_a_time_per_directory(tmp_path: Path) -> None:
    write_files(tmp_path, {"play-1.npl": talk("c-1", "p-a", NOW - 40 * DAY)})
    with filelock.FileLock(str(tmp_path / ".purge.lock"), timeout=0):
        with pytest.raises(LogFormatError, match="another `npcrl logs purge` is working on this directory"):
            purge_logs(tmp_path, PurgeRequest(older_than_s=30 * DAY, now=NOW))
        assert purge_logs(tmp_path, PurgeRequest(older_than_s=30 * DAY, now=NOW), dry_run=True).conversations == 1
    assert (tmp_path / "play-1.npl").exists()
    assert purge_logs(tmp_path, PurgeRequest(older_than_s=30 * DAY, now=NOW)).complete
    assert not (tmp_path / "play-1.npl").exists()
