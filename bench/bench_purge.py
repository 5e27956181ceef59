"""What privacy costs: pseudonymising a ConversationStart at append, and purging a log directory.

  append   the caller's time to frame a ConversationStart with a raw player id (HMAC-SHA256 and a
           copy of the record) against one whose id is already a pseudonym (nothing to do)
  purge    a directory written by PlayLogWriter: --conversations conversations of --turns NPC turns
           (60 response tokens) and a rating each, 4 MiB files, their starts spread over 60 days;
           ``purge_logs(--older-than 30d)`` (about half go, every file rewritten) and then an
           erasure of one player (one file rewritten); MB/s is the directory's size over the time

Usage: python bench/bench_purge.py [--conversations 4000] [--turns 6] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from npcrl.playlog import ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter  # noqa: E402
from npcrl.playlog.purge import PurgeRequest, purge_logs  # noqa: E402
from npcrl.privacy.pseudonym import pseudonym  # noqa: E402

KEY = bytes(range(32))
DAY = 86400.0
NOW = 1_800_000_000.0


def turn(cid: str, index: int, when: float) -> NpcTurn:
    n = 60
    return NpcTurn(
        cid, index, "brom", "0123456789abcdef", "Can you fix my sword?", list(range(200)), list(range(n)),
        [-0.5] * n, [-0.6] * n, "Aye, leave it on the anvil.", "eos", {}, 0.4, 0.03, False, False, when,
    )  # fmt: skip


def bench_append(repeats: int = 20000) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, PlayLogWriter(tmp, pseudonym_key=KEY) as writer:
        raw = ConversationStart("c", "brom", "steam:7656119", "Brom", "h" * 64, "b" * 16, {}, NOW)
        done = ConversationStart("c", "brom", pseudonym("steam:7656119", KEY), "Brom", "h" * 64, "b" * 16, {}, NOW)
        timings = []
        for record in (raw, done):
            start = time.perf_counter()
            for _ in range(repeats):
                writer._frame(record)  # the caller-side work of append, without the queue
            timings.append((time.perf_counter() - start) / repeats * 1e6)
    return timings[0], timings[1]


def write_logs(directory: Path, conversations: int, turns: int) -> int:
    with PlayLogWriter(directory, pseudonym_key=KEY, max_file_bytes=4 << 20, queue_size=10**7) as writer:
        for k in range(conversations):
            when = NOW - 60 * DAY * (k / conversations)
            cid = f"conv-{k}"
            writer.append(ConversationStart(cid, "brom", f"player-{k}", "Brom", "h" * 64, "b" * 16, {}, when))
            for t in range(turns):
                writer.append(turn(cid, t, when + t))
                writer.append(EngagementEvent(cid, t, "rating", 4.0, when + t + 0.5))
    return sum(p.stat().st_size for p in directory.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=4000)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--dir", help="where to write the logs (default: a temporary directory)")
    args = parser.parse_args()
    raw_us, done_us = bench_append()
    print(f"append ConversationStart: raw id {raw_us:.1f} us, already a pseudonym {done_us:.1f} us")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        logs = Path(tmp) / "logs"
        size = write_logs(logs, args.conversations, args.turns)
        for label, request in (
            ("older than 30d", PurgeRequest(older_than_s=30 * DAY, now=NOW)),
            ("one player", PurgeRequest(player_ids=frozenset({pseudonym("player-7", KEY)}))),
        ):
            files = sum(name.endswith(".npl") for name in os.listdir(logs))
            start = time.perf_counter()
            report = purge_logs(logs, request)
            took = time.perf_counter() - start
            removed = sum(report.removed().values())
            print(
                f"purge {label}: {size / 1e6:.0f} MB in {files} files, {report.conversations} conversations,"
                f" {removed} records removed from {len(report.files)} files in {took:.2f} s ({size / 1e6 / took:.0f} MB/s)"
            )
            size = sum(p.stat().st_size for p in logs.iterdir() if p.suffix == ".npl")


if __name__ == "__main__":
    main()
