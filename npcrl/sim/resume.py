"""Going on with a simulation that was cut off, without playing its finished conversations again.

Simulation is seeded per conversation (``npcrl.sim.simulate``): conversation k is the same whatever
ran before it, and its id names the bundle, the seed and k. A run writes whole conversations in
order, so a cut-off run's logs hold conversations 0..k-1 finished (each ends with a
``ConversationEnd``) and at most the start of conversation k. ``keep_finished`` copies those k
into a new log; ``simulate(..., first=k)`` then plays only the rest, and the result is the log an
uninterrupted run would have written (the copied records keep their original times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from npcrl.errors import NpcrlError
from npcrl.playlog import ConversationEnd, ConversationStart, PlayLogWriter, Record, list_log_files, read_log_dir
from npcrl.sim.draws import simulated_conversation_id

_FLUSH_EVERY = 10_000  # the writer's queue is bounded; a long copy must not overrun it


def keep_finished(cut_off: Path, writer: PlayLogWriter, bundle_id: str, seed: int, limit: int) -> int:
    """Copy into ``writer`` the conversations 0, 1, ... that ``cut_off`` (a cut-off run's log
    directory; read, never changed) holds finished, stopping at the first one missing or unfinished
    or at ``limit``; returns how many were kept: the index the run goes on from."""
    kept = finished_conversations(cut_off, bundle_id, seed, limit)
    ids = {simulated_conversation_id(bundle_id, seed, k) for k in range(kept)}
    copy_records(read_log_dir(cut_off), writer, lambda conversation_id: conversation_id in ids)
    writer.flush()  # on disk before the run reads its directory (simulate refuses a repeated run)
    return kept


def finished_conversations(log_dir: Path, bundle_id: str, seed: int, limit: int | None = None) -> int:
    """How many of a simulation's conversations 0, 1, ... ``log_dir`` holds finished, in a row (at
    most ``limit``)."""
    if not has_logs(log_dir):
        return 0
    ended = {r.conversation_id for r in read_log_dir(log_dir) if isinstance(r, ConversationEnd)}
    count = 0
    while (limit is None or count < limit) and simulated_conversation_id(bundle_id, seed, count) in ended:
        count += 1
    return count


def copy_records(records: Iterable[Record], writer: PlayLogWriter, keep: Callable[[str], bool]) -> int:
    """Append to ``writer``, in order, every record whose conversation ``keep`` accepts; how many."""
    copied = 0
    for record in records:
        if keep(record.conversation_id):
            writer.append(record)
            copied += 1
            if copied % _FLUSH_EVERY == 0:
                writer.flush()
    return copied


def resumable_conversations(log_dir: Path, bundle_id: str, seed: int, limit: int) -> int:
    """How many of the run's conversations ``log_dir`` holds finished, in a row (at most ``limit``;
    0 when it holds no logs), read in one pass. Refuses a directory with logs but not the start of
    this run: logs of another bundle or seed would be set aside and the whole run played again,
    which is not what a resume promises."""
    if not has_logs(log_dir):
        return 0
    started, ended = set(), set()
    for record in read_log_dir(log_dir):
        if isinstance(record, ConversationStart):
            started.add(record.conversation_id)
        elif isinstance(record, ConversationEnd):
            ended.add(record.conversation_id)
    if simulated_conversation_id(bundle_id, seed, 0) not in started:
        raise NpcrlError(
            f"{log_dir}: holds play logs, but not the start of this run (bundle {bundle_id}, seed {seed});"
            " --resume goes on with a run of the same --bundle and --seed; write into another --logs instead"
        )
    count = 0
    while count < limit and simulated_conversation_id(bundle_id, seed, count) in ended:
        count += 1
    return count


def has_logs(log_dir: Path) -> bool:
    """Whether ``log_dir`` exists and holds play-log files."""
    return log_dir.is_dir() and bool(list_log_files(log_dir))
