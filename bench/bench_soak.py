"""Soak: many simulated players on the four built-in NPCs for minutes (a benchmark, not a test).

Each player thread walks up to an NPC, takes a few turns with think-time between them (asynchronous
turns, polled like a game loop), then ends the conversation, walks away mid-talk, or just drops it
without ending it. Reported per player count: lines, fallbacks (capacity = the model was busy,
other), time to first token p50/p99 including the wait for a KV slot, resident memory sampled over
the run and its slope after a warm-up (least-squares, MB/min), the same less the KV pool's pages
touched so far (see ``KvHighWater``), and play-log records written against records read back.
Each player count runs in its own process.

Usage: python bench/bench_soak.py [--bundle DIR] [--players 8 16] [--minutes 10]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcrl.agent.npc_agent import AgentConfig, NpcAgent, NpcLine  # noqa: E402
from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.playlog import PlayLogWriter, Record, read_log_dir  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM, SessionOptions  # noqa: E402

CAPACITY_MARKERS = ("KV slot", "kv_queue_limit", "generating at once")
PLAYER_LINES = ["Hello there!", "Any work for a traveller?", "What news?", "How much for that?", "Farewell."]


class CountingSink:
    """Forwards records to the writer and counts them (records written, to compare with read back)."""

    def __init__(self, writer: PlayLogWriter) -> None:
        self.writer = writer
        self.count = 0
        self._lock = threading.Lock()

    def append(self, record: Record) -> None:
        self.writer.append(record)
        with self._lock:
            self.count += 1


@dataclass(frozen=True)
class LineStats:
    """What the soak keeps of a line: not the line itself, whose ids would grow the memory measured."""

    fallback: bool
    reason: str
    ttft_s: float | None
    queue_s: float


@dataclass
class Tally:
    lines: list[LineStats] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, line: NpcLine) -> None:
        ttft = line.time_to_first_token_s if line.generation is not None else None
        with self.lock:
            self.lines.append(LineStats(line.fallback, line.filter_reason or "", ttft, line.queue_s))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def player(agents: list[NpcAgent], seed: int, deadline: float, think_s: float, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        talk = rng.choice(agents).start_conversation(f"player-{seed}")
        for _ in range(rng.randint(1, 5)):
            pending = talk.respond_async(rng.choice(PLAYER_LINES))
            while not pending.done:  # a game polls once per frame
                time.sleep(1 / 60)
            tally.add(pending.result())
            time.sleep(rng.uniform(0.5, 1.5) * think_s)
            if time.monotonic() >= deadline:
                break
        leave = rng.random()
        if leave < 0.6:
            talk.end()
        elif leave < 0.8:
            talk.walk_away()
        else:  # dropped without end(): its slot must come back through garbage collection
            talk.wait_idle(60)
            del talk
        time.sleep(rng.uniform(0.0, 1.0) * think_s)


def slope_mb_per_min(samples: list[tuple[float, float]], warmup_s: float) -> float:
    kept = [(t, m) for t, m in samples if t >= warmup_s]
    if len(kept) < 3:
        return float("nan")
    t, m = np.array(kept).T
    return float(np.polyfit(t / 60, m, 1)[0])


def fallback_reasons(lines: list[LineStats]) -> str:
    counts = collections.Counter(line.reason.split(":")[0] or "none" for line in lines if line.fallback)
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common()) or "-"


def soak(bundle: Path, players: int, minutes: float, think_s: float) -> dict[str, float]:
    model = OnnxCausalLM(bundle, SessionOptions())
    log_dir = Path(tempfile.mkdtemp(prefix="npcrl-soak-"))
    writer = PlayLogWriter(log_dir)
    sink = CountingSink(writer)
    short = (model.max_positions or 2048) < 1024  # a tiny test bundle cannot hold a full persona card
    config = AgentConfig(prompt_token_budget=min(1024, model.max_tokens or 1024))
    agents = [
        NpcAgent(model, p, log_writer=sink, config=config, system_prompt=f"You are {p.name}." if short else None)
        for p in builtin_personas().values()
    ]
    for agent in agents:
        agent.warm_up()
    tally = Tally()
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    deadline = start + minutes * 60
    threads = [
        threading.Thread(target=player, args=(agents, seed, deadline, think_s, tally), daemon=True)
        for seed in range(players)
    ]
    for thread in threads:
        thread.start()
    touched = KvHighWater(model)
    while any(thread.is_alive() for thread in threads):
        samples.append((time.monotonic() - start, rss_mb(), touched.sample_mb()))
        time.sleep(min(2.0, minutes * 60 / 50))
    gc.collect()
    samples.append((time.monotonic() - start, rss_mb(), touched.sample_mb()))
    writer.close()
    read_back = sum(1 for _ in read_log_dir(log_dir))
    return summarise(tally.lines, samples, min(120.0, minutes * 12), sink.count, read_back, model)


class KvHighWater:
    """The KV pool's resident memory, estimated from each slot's deepest position seen so far.

    The pool's arrays are mapped lazily: a slot's pages become resident as its sequences reach
    deeper positions and stay resident when the slot is reused. RSS therefore climbs towards
    slots x deepest conversation x bytes per token — bounded by design, not a leak. Sampling the
    slots' lengths (every two seconds) tells that growth apart from the rest of the process."""

    def __init__(self, model: OnnxCausalLM) -> None:
        self.pool = model.pool
        self.deepest = np.zeros(self.pool.slots if self.pool is not None else 0, dtype=np.int64)

    def sample_mb(self) -> float:
        if self.pool is None:
            return 0.0
        np.maximum(self.deepest, self.pool.lengths(0, self.pool.slots - 1), out=self.deepest)
        return float(self.deepest.sum()) * self.pool.layout.bytes_per_token() / 2**20


def summarise(
    lines: list[LineStats],
    samples: list[tuple[float, float, float]],
    warmup_s: float,
    written: int,
    read_back: int,
    model: OnnxCausalLM,
) -> dict[str, float]:
    capacity = sum(1 for line in lines if line.fallback and any(m in line.reason for m in CAPACITY_MARKERS))
    ttft = np.array([line.ttft_s for line in lines if line.ttft_s is not None] or [0.0]) * 1000
    queue = np.array([line.queue_s for line in lines] or [0.0]) * 1000
    pool = model.pool
    return {
        "lines": len(lines),
        "fallback_capacity": capacity,
        "fallback_other": sum(1 for line in lines if line.fallback) - capacity,
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "queue_p99_ms": float(np.percentile(queue, 99)),
        "max_waiters": float(pool.queue.max_seen) if pool is not None else 0.0,
        "fallback_reasons": fallback_reasons(lines),
        "rss_start_mb": samples[0][1],
        "rss_end_mb": samples[-1][1],
        "kv_touched_end_mb": samples[-1][2],
        "rss_slope_mb_min": slope_mb_per_min([(t, m) for t, m, _ in samples], warmup_s),
        "rss_less_kv_slope_mb_min": slope_mb_per_min([(t, m - kv) for t, m, kv in samples], warmup_s),
        "records_written": written,
        "records_read": read_back,
    }


def soak_in_child(args: argparse.Namespace, players: int) -> dict[str, float]:
    """One row in a fresh process, so that its memory figures do not start from the last row's."""
    cmd = [sys.executable, __file__, "--one", "--bundle", str(args.bundle), "--players", str(players)]
    cmd += ["--minutes", str(args.minutes), "--think-s", str(args.think_s)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--players", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--think-s", type=float, default=2.0, help="mean think-time between a player's turns")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one row, as JSON (a child process)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(soak(args.bundle, args.players[0], args.minutes, args.think_s)))
        return
    rows = [(n, soak_in_child(args, n)) for n in args.players]
    print(f"\nbundle {args.bundle.name}; {os.cpu_count()} CPUs; {args.minutes:g} min per row\n")
    keys = list(rows[0][1])
    print("| players | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for n, row in rows:
        print(f"| {n} | " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
