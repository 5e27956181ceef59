"""Dropping whole conversations from a play-log directory: by age, by player (erasure), or both.

Two passes. The first reads every file (every record, copies included) and picks the conversations
to drop: those whose ``ConversationStart`` (or, without one, first record) is older than the cutoff,
and those whose ``ConversationStart.player_id`` is one of the ids to erase (pseudonyms, and raw ids
in logs written before ids were pseudonymised). The second rewrites each file that holds a record
of one of them (``purge_io.purge_file``): those records go wherever they are (turns and events in
other files than the start included), every other byte stays as it was; files that hold none are
not touched.

Crash safety and files in use. Each rewrite is atomic. Before any file changes, the ids to drop
are written to a journal in the directory (``.purge-pending.json``); a purge that crashed, or met
a file a writer still holds (``inuse``: such a file is never rewritten), leaves the ids that still
have records there, and the next purge drops them too, whatever it was asked for, so a conversation
is never left half-erased and forgotten. One purge at a time per directory (lock file
``.purge.lock``); each first removes the temporary files of a purge that crashed.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from npcrl.errors import LogFormatError
from npcrl.playlog.purge_io import (
    FAILED,
    IN_USE,
    EveryRecord,
    FilePurge,
    purge_file,
    read_journal,
    remove_leftover_temps,
    write_journal,
)
from npcrl.playlog.reader import LogReader, list_log_files
from npcrl.playlog.records import ConversationStart

LOCK_NAME = ".purge.lock"


@dataclass(frozen=True)
class PurgeRequest:
    """What to drop. ``player_ids`` are ``ConversationStart.player_id`` values (pseudonyms, or raw
    ids in logs from before pseudonyms); ``now`` is the clock for ``older_than_s`` (default: now)."""

    older_than_s: float | None = None
    player_ids: frozenset[str] = frozenset()
    now: float | None = None


@dataclass
class PurgeReport:
    dry_run: bool
    conversations: int = 0  # chosen to drop (the journal's included)
    from_journal: int = 0  # of those, left by an earlier purge
    files: list[FilePurge] = field(default_factory=list)  # only the files holding chosen records
    unreadable: dict[Path, str] = field(default_factory=dict)  # could not be read, so not checked
    # Per file, stretches no record could be read from (corrupt, unknown kind, torn tail): purge
    # cannot tell whose they are, so it keeps them; `npcrl logs validate` shows where they are.
    unattributed: dict[Path, int] = field(default_factory=dict)
    temps_removed: list[Path] = field(default_factory=list)
    left: set[str] = field(default_factory=set)  # conversations with records in files not rewritten

    @property
    def complete(self) -> bool:
        """True when every chosen record is gone (or, dry, could go) and every file could be read."""
        return not self.left and not self.unreadable

    def removed(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for item in self.files:
            total.update(item.removed)
        return total


@dataclass
class _Conversation:
    start_time: float | None = None
    first_time: float = math.inf
    players: set[str] = field(default_factory=set)


@dataclass
class _Scan:
    conversations: dict[str, _Conversation] = field(default_factory=dict)
    ids_per_file: dict[Path, set[str]] = field(default_factory=dict)


def purge_logs(directory: str | Path, request: PurgeRequest, *, dry_run: bool = False) -> PurgeReport:
    """Drop the conversations ``request`` selects from every file in ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        raise LogFormatError(f"{root}: purge works on a play-log directory (conversations span files)")
    if request.older_than_s is None and not request.player_ids:
        raise LogFormatError("purge: give an age (older_than_s) or player ids, or both")
    if dry_run:
        return _purge(root, request, PurgeReport(dry_run=True))
    with _purge_lock(root):
        report = PurgeReport(dry_run=False, temps_removed=remove_leftover_temps(root))
        return _purge(root, request, report)


@contextmanager
def _purge_lock(root: Path) -> Iterator[None]:
    lock = filelock.FileLock(str(root / LOCK_NAME), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LogFormatError(f"{root}: another `npcrl logs purge` is working on this directory") from None
    try:
        yield
    finally:
        lock.release()


def _purge(root: Path, request: PurgeRequest, report: PurgeReport) -> PurgeReport:
    pending = read_journal(root)
    scan = _scan(list_log_files(root), report)
    drop = _select(scan, request) | pending
    report.conversations, report.from_journal = len(drop), len(pending)
    if not report.dry_run and drop:
        write_journal(root, drop)  # before any file changes: a crash from here on is finished next time
    for path, ids in scan.ids_per_file.items():
        if path in report.unreadable or drop.isdisjoint(ids):
            continue
        outcome = purge_file(path, drop, dry_run=report.dry_run)
        report.files.append(outcome)
        if outcome.status in (IN_USE, FAILED):
            report.left |= drop & ids
    if not report.dry_run:
        write_journal(root, report.left)
    return report


def _scan(files: list[Path], report: PurgeReport) -> _Scan:
    """Where each conversation's records are, when it started and with which player."""
    scan = _Scan()
    for path in files:
        ids = scan.ids_per_file.setdefault(path, set())
        reader = LogReader(path, index=EveryRecord())
        try:
            for entry in reader.entries():
                record = entry.record
                ids.add(record.conversation_id)
                conversation = scan.conversations.setdefault(record.conversation_id, _Conversation())
                conversation.first_time = min(conversation.first_time, record.time)
                if isinstance(record, ConversationStart):
                    conversation.players.add(record.player_id)
                    start = conversation.start_time
                    conversation.start_time = record.time if start is None else min(start, record.time)
        except LogFormatError as exc:
            report.unreadable[path] = str(exc)
        stats = reader.stats
        unattributed = stats.corrupt_skipped + stats.unknown_kinds + (1 if stats.torn_tail_bytes else 0)
        if unattributed:
            report.unattributed[path] = unattributed
    return scan


def _select(scan: _Scan, request: PurgeRequest) -> set[str]:
    cutoff = None
    if request.older_than_s is not None:
        cutoff = (time.time() if request.now is None else request.now) - request.older_than_s
    chosen = set()
    for conversation_id, conversation in scan.conversations.items():
        started = conversation.start_time if conversation.start_time is not None else conversation.first_time
        if (cutoff is not None and started < cutoff) or not conversation.players.isdisjoint(request.player_ids):
            chosen.add(conversation_id)
    return chosen
