"""``npcrl logs inspect | stats | validate | purge | compare``: look into a play-log directory (or one
``.npl`` file), drop old conversations or a player's conversations from a directory, and compare two
evaluations' logs (``npcrl.cli.logs_compare``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from npcrl.cli.args import add_command, age_seconds, positive_int, pseudonym_arg
from npcrl.cli.logs_compare import add_compare_parser
from npcrl.errors import LogFormatError
from npcrl.paths import default_key_path
from npcrl.playlog.dedupe import RecordIndex
from npcrl.playlog.purge import PurgeReport, PurgeRequest, purge_logs
from npcrl.playlog.reader import LogEntry, LogReader, LogReadStats
from npcrl.playlog.records import (
    KIND_NAMES,
    ConversationEnd,
    ConversationStart,
    EngagementEvent,
    NpcTurn,
)
from npcrl.privacy.pseudonym import load_key, pseudonym

_KIND_BY_NAME = {name: kind for kind, name in KIND_NAMES.items()}
_TEXT_WIDTH = 100


def add_logs_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``logs inspect|stats|validate|purge|compare`` on an argparse subparsers object; each sets ``func``."""
    logs = add_command(
        subparsers, "logs", "inspect, summarise, validate, purge and compare play logs", "npcrl logs stats saves/logs"
    )
    sub = logs.add_subparsers(dest="logs_command", required=True)

    inspect = add_command(
        sub, "inspect", "print records, one per line", "npcrl logs inspect saves/logs --kind npc_turn --limit 5"
    )
    inspect.add_argument("dir", help="play-log directory, or one .npl file")
    inspect.add_argument("--limit", type=positive_int, help="print at most N records")
    inspect.add_argument("--kind", choices=sorted(_KIND_BY_NAME), help="only records of this kind")
    inspect.add_argument("--json", action="store_true", help="JSON lines with every field")
    inspect.set_defaults(func=cmd_inspect)

    stats = add_command(
        sub, "stats", "counts of records, conversations, turns, events and damage", "npcrl logs stats saves/logs --json"
    )
    stats.add_argument("dir", help="play-log directory, or one .npl file")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=cmd_stats)

    validate = add_command(
        sub, "validate", "check every file; exit 1 if anything is corrupt", "npcrl logs validate saves/logs"
    )
    validate.add_argument("dir", help="play-log directory, or one .npl file")
    validate.set_defaults(func=cmd_validate)
    _add_purge_parser(sub)
    add_compare_parser(sub)
    return logs


def _add_purge_parser(sub: Any) -> None:
    purge = add_command(
        sub,
        "purge",
        "drop whole conversations, older than an age or of a player, from every file of a play-log directory",
        "npcrl logs purge saves/logs --older-than 30d\nnpcrl logs purge saves/logs --player steam:7656119 --dry-run",
        description="Drop whole conversations, older than an age or of a player, from every file of a play-log\n"
        "directory. Files a writer is still appending to are left alone; their conversations are remembered\n"
        "and dropped by the next purge. Exit code 1 while anything chosen is left.",
    )
    purge.add_argument("dir", help="play-log directory")
    purge.add_argument(
        "--older-than", type=age_seconds, metavar="AGE", help="conversations started before AGE ago: 30d, 12h, 2w"
    )
    purge.add_argument("--player", action="append", default=[], metavar="ID", help="erase this player (repeatable)")
    purge.add_argument(
        "--pseudonym",
        action="append",
        default=[],
        type=pseudonym_arg,
        metavar="P",
        help="erase this pseudonym (p-...)",
    )
    purge.add_argument(
        "--key-file", help="the pseudonym key for --player (default: NPCRL_KEY_FILE or the user data dir)"
    )
    purge.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    purge.set_defaults(func=cmd_purge)


def _time(value: float) -> str:
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return repr(value)


def _quote(text: str) -> str:
    if len(text) > _TEXT_WIDTH:
        text = text[: _TEXT_WIDTH - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def format_entry(entry: LogEntry) -> str:
    """One human-readable line for a record."""
    r = entry.record
    where = f"{entry.path.name}@{entry.offset}"
    if isinstance(r, ConversationStart):
        body = (
            f"conv={r.conversation_id} npc={r.npc_id} player={r.player_id} persona={_quote(r.persona_name)}"
            f" ({r.persona_hash[:12]}) bundle={r.bundle_id}"
        )
    elif isinstance(r, NpcTurn):
        flags = "".join(
            [
                f" filtered({r.filter_reason or '?'})" if r.filtered else "",
                " fallback" if r.fallback else "",
                f" reason={r.filter_reason}" if r.filter_reason and not r.filtered else "",
                f" rejected_samples={len(r.rejected_samples)}" if r.rejected_samples else "",
            ]
        )
        body = (
            f"conv={r.conversation_id} turn={r.turn_index} npc={r.npc_id} bundle={r.bundle_id}"
            f" tokens={len(r.response_ids)} stop={r.stop_reason} latency={r.latency_s:.3f}s{flags}"
            f" player={_quote(r.player_text)} npc_text={_quote(r.text)}"
        )
    elif isinstance(r, EngagementEvent):
        data = f" data={json.dumps(r.data, ensure_ascii=False, default=repr)}" if r.data else ""
        body = f"conv={r.conversation_id} turn={r.turn_index} event={r.kind} value={r.value}{data}"
    else:
        assert isinstance(r, ConversationEnd)
        body = f"conv={r.conversation_id} reason={r.reason}"
    return f"{where} {_time(r.time)} {KIND_NAMES[entry.kind]} {body}"


def entry_json(entry: LogEntry) -> str:
    """One JSON line with every field (bytes in ``data`` appear as their repr)."""
    obj = {"file": entry.path.name, "offset": entry.offset, "kind": KIND_NAMES[entry.kind]}
    obj.update(dataclasses.asdict(entry.record))
    return json.dumps(obj, ensure_ascii=False, default=repr)


def cmd_inspect(args: argparse.Namespace) -> int:
    reader = LogReader(args.dir)
    wanted = _KIND_BY_NAME[args.kind] if args.kind else None
    shown = 0
    for entry in reader.entries():
        if wanted is not None and entry.kind != wanted:
            continue
        print(entry_json(entry) if args.json else format_entry(entry))
        shown += 1
        if args.limit is not None and shown >= args.limit:
            break
    return 0


def summarize(reader: LogReader) -> dict[str, Any]:
    """Counts over every record ``reader`` yields, plus its read statistics."""
    kinds: Counter[str] = Counter()
    events: Counter[str] = Counter()
    bundles: Counter[str] = Counter()
    conversations: set[str] = set()
    turns = filtered = fallback = tokens = 0
    for entry in reader.entries():
        r = entry.record
        kinds[KIND_NAMES[entry.kind]] += 1
        conversations.add(r.conversation_id)
        if isinstance(r, ConversationStart):
            bundles[r.bundle_id] += 0  # seen, even before its first turn
        elif isinstance(r, NpcTurn):
            turns += 1
            filtered += r.filtered
            fallback += r.fallback
            tokens += len(r.response_ids)
            bundles[r.bundle_id] += 1
        elif isinstance(r, EngagementEvent):
            events[r.kind] += 1
    s = reader.stats
    return {
        "files": s.files,
        "records": s.records,
        "records_per_kind": {name: kinds[name] for name in KIND_NAMES.values()},
        "conversations": len(conversations),
        "turns": turns,
        "filtered_turns": filtered,
        "fallback_turns": fallback,
        "response_tokens": tokens,
        "events_per_kind": dict(sorted(events.items())),
        "turns_per_bundle": dict(sorted(bundles.items())),
        "unknown_kinds": s.unknown_kinds,
        "corrupt_skipped": s.corrupt_skipped,
        "corrupt_bytes": s.corrupt_bytes,
        "invalid_records": s.invalid_records,
        "torn_tail_bytes": s.torn_tail_bytes,
        "duplicate_records": s.duplicates,
        "conflicting_records": s.conflicts,
    }


def cmd_stats(args: argparse.Namespace) -> int:
    summary = summarize(LogReader(args.dir))
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, count in value.items():
                print(f"  {name}: {count}")
        else:
            print(f"{key}: {value}")
    return 0


def _report_issues(stats: LogReadStats) -> None:
    for issue in stats.issues:
        what = "corrupt" if issue.corrupt else "torn tail"
        print(f"{issue.path.name}@{issue.offset}: {what}, {issue.size} bytes: {issue.problem}")
    shown = len(stats.issues)
    total = stats.corrupt_skipped + (1 if stats.torn_tail_bytes else 0)
    if shown < total:
        print(f"... and more issues not listed (only the first {shown} are kept)")
    for repeat in stats.repeats:
        print(repeat.describe())
    if len(stats.repeats) < stats.duplicates + stats.conflicts:
        print(f"... and more repeated records not listed (only the first {len(stats.repeats)} are kept)")


def cmd_validate(args: argparse.Namespace) -> int:
    """Reads each file on its own, so that one unreadable file does not hide the others; one
    record index spans them all, so a record repeated in another file is found too."""
    files = LogReader(args.dir).files()
    records = corrupt = corrupt_bytes = torn = unknown = invalid = duplicates = conflicts = 0
    unreadable = 0
    index = RecordIndex()
    for path in files:
        reader = LogReader(path, index=index)
        try:
            for _ in reader:
                pass
        except LogFormatError as exc:
            unreadable += 1
            print(f"{path.name}: unreadable: {exc}")
        _report_issues(reader.stats)
        records += reader.stats.records
        corrupt += reader.stats.corrupt_skipped
        corrupt_bytes += reader.stats.corrupt_bytes
        torn += reader.stats.torn_tail_bytes
        unknown += reader.stats.unknown_kinds
        invalid += reader.stats.invalid_records
        duplicates += reader.stats.duplicates
        conflicts += reader.stats.conflicts
    print(
        f"{len(files)} file(s), {records} record(s), {unknown} of unknown kind, {corrupt} corrupt stretch(es)"
        f" ({corrupt_bytes} bytes; {invalid} invalid record(s)), {torn} torn-tail byte(s),"
        f" {unreadable} unreadable file(s), {duplicates} duplicate record(s), {conflicts} conflicting record(s)"
    )
    # Identical duplicates are read once and change nothing; a conflict means the logs disagree.
    status = "CORRUPT" if corrupt or unreadable else "CONFLICTING" if conflicts else "OK"
    print(status + (" (duplicates are counted once)" if status == "OK" and duplicates else ""))
    return 0 if status == "OK" else 1


def cmd_purge(args: argparse.Namespace) -> int:
    if args.older_than is None and not args.player and not args.pseudonym:
        raise LogFormatError("logs purge: give --older-than, --player or --pseudonym")
    ids = set(args.pseudonym)
    if args.player:
        key = load_key(args.key_file or default_key_path())
        # The raw id too: logs written before ids were pseudonymised hold it as it is.
        ids |= {pseudonym(player, key) for player in args.player} | set(args.player)
    report = purge_logs(
        args.dir, PurgeRequest(older_than_s=args.older_than, player_ids=frozenset(ids)), dry_run=args.dry_run
    )
    _print_purge(report)
    return 0 if report.complete else 1


def _print_purge(report: PurgeReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    for path in report.temps_removed:
        print(f"{path.name}: removed, left by a purge that did not finish")
    journal = f" ({report.from_journal} left by an earlier purge)" if report.from_journal else ""
    print(f"{report.conversations} conversation(s) chosen{journal}")
    for item in report.files:
        kinds = ", ".join(f"{name} {count}" for name, count in sorted(item.removed.items()))
        detail = f" ({item.detail})" if item.detail else ""
        print(f"{item.path.name}: {item.status}{detail}; {verb} {sum(item.removed.values())} record(s) [{kinds}]")
    for path, problem in report.unreadable.items():
        print(f"{path.name}: unreadable, not checked: {problem}")
    for path, count in report.unattributed.items():
        print(f"{path.name}: {count} stretch(es) no record could be read from, kept (see npcrl logs validate)")
    total = report.removed()
    print(f"{verb} {sum(total.values())} record(s) from {len(report.files)} file(s)")
    if report.left:
        print(f"{len(report.left)} conversation(s) still have records in files not rewritten; run purge again later")
