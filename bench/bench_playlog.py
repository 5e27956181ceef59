"""Play-log writer throughput and append latency, as the game loop sees them.

For engagement events and NPC turns (60 response tokens, 200 prompt tokens) under sync "flush" and
"fsync_interval", two passes each on a fresh writer in a temporary directory:
  throughput  appends N records back to back (median of --repeats runs, after a warm-up): appended/s is N over the time the appends took (the
              caller's view); sustained/s and MB/s are N and the bytes written over the time until
              flush() returned (everything handed to the OS, fsynced under fsync_interval);
              read/s is LogReader reading the files back (checksums, msgpack, validation)
  latency     the same appends, each timed with perf_counter_ns: p50 / p99 / p99.9 / max
The queue is sized to hold every record, so "dropped" must stay 0. The prebuilt records are frozen
out of the cyclic GC (gc.freeze), so that collections do not scan the benchmark's own heap.

Usage: python bench/bench_playlog.py [--events 200000] [--turns 20000] [--repeats 3] [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table  # noqa: E402
from npcrl.playlog import EngagementEvent, LogReader, NpcTurn, PlayLogWriter, Record  # noqa: E402

SAMPLER = {"temperature": 0.7, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 64, "seed": None}


def make_events(n: int) -> list[Record]:
    return [
        EngagementEvent(f"conv-{i // 50}", i % 50, "reply", float(i % 5), 1.7e9 + i * 0.01, {"chars": 42})
        for i in range(n)
    ]


def make_turns(n: int) -> list[Record]:
    return [
        NpcTurn(
            conversation_id=f"conv-{i // 10}",
            turn_index=i % 10,
            npc_id="brom",
            bundle_id="0123456789abcdef",
            player_text="Good morning! Can you fix my sword before nightfall?",
            prompt_ids=[(i + j * 7) % 49152 for j in range(200)],
            response_ids=[(i + j * 13) % 49152 for j in range(60)],
            logprobs=[-0.05 - (j % 17) / 7.0 for j in range(60)],
            full_logprobs=[-0.06 - (j % 19) / 7.0 for j in range(60)],
            text="Aye, leave it on the anvil and come back at sundown. Hedda will vouch for my work, traveller.",
            stop_reason="eos",
            sampler=SAMPLER,
            latency_s=0.41,
            time_to_first_token_s=0.031,
            filtered=False,
            fallback=False,
            time=1.7e9 + i,
        )
        for i in range(n)
    ]


def throughput(records: list[Record], sync: str, root: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        writer = PlayLogWriter(tmp, sync=sync, queue_size=len(records) + 1)  # type: ignore[arg-type]
        append = writer.append
        began = time.perf_counter()
        for record in records:
            append(record)
        appended = time.perf_counter() - began
        writer.flush()
        flushed = time.perf_counter() - began
        writer.close()
        s = writer.stats
        began = time.perf_counter()
        read = sum(1 for _ in LogReader(tmp))
        read_s = time.perf_counter() - began
    if read != s.records_written:
        raise SystemExit(f"read back {read} records, wrote {s.records_written}")
    return {
        "appended_per_s": len(records) / appended,
        "sustained_per_s": s.records_written / flushed,
        "mb_per_s": s.bytes_written / flushed / 1e6,
        "bytes_per_record": s.bytes_written / len(records),
        "read_per_s": read / read_s,
        "dropped": s.dropped,
    }


def latency(records: list[Record], sync: str, root: Path) -> dict[str, float]:
    samples = []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        writer = PlayLogWriter(tmp, sync=sync, queue_size=len(records) + 1)  # type: ignore[arg-type]
        append, clock = writer.append, time.perf_counter_ns
        for record in records:
            t0 = clock()
            append(record)
            samples.append(clock() - t0)
        writer.close()
        dropped = writer.stats.dropped
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000

    return {
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": samples[-1] / 1000,
        "latency_dropped": dropped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per row; the median is shown")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the system temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.gettempdir())
    workloads = {"engagement_event": make_events(args.events), "npc_turn (60 tok)": make_turns(args.turns)}
    # Keep the prebuilt records out of the cyclic GC's scans: collections should time the writer's
    # allocations, not this benchmark's own heap of a few hundred thousand objects.
    gc.collect()
    gc.freeze()
    rows = []
    for name, records in workloads.items():
        throughput(records, "flush", root)  # warm-up (discarded): the first pass over the records runs slower
        for sync in ("flush", "fsync_interval"):
            runs = sorted(
                (throughput(records, sync, root) for _ in range(args.repeats)), key=lambda r: r["appended_per_s"]
            )
            row: dict[str, Any] = {"record": name, "sync": sync, "n": len(records)}
            row.update(runs[len(runs) // 2])  # the median run
            row.update(latency(records, sync, root))
            rows.append(row)
    print(f"python {platform.python_version()} on {platform.machine()}, writing under {root}")
    header = (
        f"{'record':<18} {'sync':<15} {'n':>7} {'appended/s':>11} {'sustained/s':>12} {'MB/s':>6} {'B/rec':>6}"
        f" {'p50 us':>7} {'p99 us':>7} {'p99.9 us':>8} {'max us':>8} {'dropped':>7} {'read/s':>9}"
    )
    print_table(
        header,
        (
            f"{r['record']:<18} {r['sync']:<15} {r['n']:>7} {r['appended_per_s']:>11,.0f} {r['sustained_per_s']:>12,.0f}"
            f" {r['mb_per_s']:>6.1f} {r['bytes_per_record']:>6.0f} {r['p50_us']:>7.1f} {r['p99_us']:>7.1f}"
            f" {r['p999_us']:>8.1f} {r['max_us']:>8.0f} {r['dropped'] + r['latency_dropped']:>7} {r['read_per_s']:>9,.0f}"
            for r in rows
        ),
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
