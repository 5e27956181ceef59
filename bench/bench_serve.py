"""``npcrl serve`` against the in-process API, and under many concurrent clients (real model).

1. Overhead. The same scripted player lines, greedy sampling (seed 0, a fixed ``max_new_tokens``),
   alternating line by line (each after a 0.3 s player's pause) between an in-process ``NpcAgent`` (``respond_async``, polled every
   0.5 ms as a game loop would poll it, at best) and a conversation over the server's WebSocket on
   loopback (one server for the whole run, started with the same settings: ``--temperature 0
   --seed 0 --max-new-tokens N``). Both sides are timed by the client: time to first token is
   from handing over the player's line to the first streamed text; decode speed is the line's
   generated tokens (read back from each side's play log) after the first, over the time from
   the first text to the final line. *TTFT beyond the agent's* is the client's TTFT less the one the agent measured
   inside generation: the time a line spends outside the model (handing over, polling, and for
   the server the WebSocket). Targets: <= 2 ms added at p50, tokens/s within 5%.
2. Concurrency. ``--clients`` WebSocket clients, one connection each, hold conversations for
   ``--seconds``: every line is followed by an event, every conversation ends. Every line must
   arrive, with no fallback for lack of capacity (more clients than KV slots queue); time to
   first token includes the queue. The server's resident memory is sampled each second; at the
   end its play log, read back with ``read_log_dir``, must hold exactly the turns and events the
   clients made.
Exits with status 1 when a correctness check fails (never for a speed target).

Usage: python bench/bench_serve.py [--bundle DIR] [--lines 20] [--max-new-tokens 32]
                                   [--clients 32] [--seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_agent import PLAYER_LINES  # noqa: E402
from bench.common import print_table  # noqa: E402
from bench.serve_client import LineTiming, ServerProcess, WsClient  # noqa: E402
from npcrl import (  # noqa: E402
    AgentConfig,
    Conversation,
    NpcAgent,
    OnnxCausalLM,
    PlayLogWriter,
    SessionOptions,
    builtin_personas,
    read_log_dir,
)
from npcrl.agent.config import with_sampler  # noqa: E402
from npcrl.cli.serve import thread_settings  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.playlog.record_types import ConversationEnd, EngagementEvent, NpcTurn  # noqa: E402

NPCS = ("blacksmith", "innkeeper", "guard", "miller")
EVENTS = (("rating", 1.0), ("rating", -1.0), ("trade", 5.0), ("haggled", 1.0))  # the last: a custom kind
POLL_S = 0.0005
THINK_S = 0.3
"""the player's pause before each overhead line"""
BUDGET_S = AgentConfig().time_budget_s or float("nan")
# uvicorn re-raises the SIGINT it handled once the server has shut down cleanly
CLEAN_EXIT = (0, 130, -2)
# Fallback reasons that mean the server ran out of capacity: the time budget ran out, the wait
# line for KV slots was full, or the turn was cancelled while it waited for a slot.
CAPACITY_REASONS = ("cancelled_or_time_budget", "too many conversations at once", "cancelled while waiting")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def in_process_line(conversation: Conversation, text: str) -> LineTiming:
    """One turn through the in-process API, timed as a game polling ``PendingLine`` sees it. It
    blocks the event loop on purpose: the server's connection is idle meanwhile (no keepalive
    pings), and an asyncio wake-up would add its own delay to the in-process side."""
    start = time.perf_counter()
    pending = conversation.respond_async(text)
    first: float | None = None
    while not pending.done:
        if first is None and pending.started:
            first = time.perf_counter() - start
        time.sleep(POLL_S)
    done = time.perf_counter() - start
    line = pending.result()
    turn = f"{conversation.conversation_id}:{line.turn_index}"
    return LineTiming(
        turn, line.text, done if first is None else first, done, line.fallback, line.time_to_first_token_s
    )


def logged_tokens(records: list) -> dict[str, int]:
    """Generated tokens of every logged turn, by turn id ``<conversation>:<turn index>``."""
    return {f"{r.conversation_id}:{r.turn_index}": len(r.response_ids) for r in records if isinstance(r, NpcTurn)}


def decode_speeds(lines: list[LineTiming], tokens: dict[str, int]) -> list[float]:
    speeds = []
    for line in lines:
        count, span = tokens.get(line.turn, 0), line.done_s - line.ttft_s
        if count > 1 and span > 0:
            speeds.append((count - 1) / span)
    return speeds


async def overhead(model: OnnxCausalLM, client: WsClient, config: AgentConfig, lines: int, logs: Path):
    """``lines`` turns each way, alternating; returns (in-process lines, server lines). Conversation
    ids are never reused: the log directory's name tags them."""
    local: list[LineTiming] = []
    remote: list[LineTiming] = []
    agent = NpcAgent(model, builtin_personas()["blacksmith"], config=config)
    with PlayLogWriter(logs) as writer:
        agent.log_writer = writer
        for n in range(0, lines, len(PLAYER_LINES)):
            conversation = agent.start_conversation("bench", f"{logs.name}-local-{n}")
            await client.open(f"{logs.name}-remote-{n}", "blacksmith", "bench")

            async def local_line(text: str, conversation: Conversation = conversation) -> None:
                local.append(in_process_line(conversation, text))

            async def remote_line(text: str, name: str = f"{logs.name}-remote-{n}") -> None:
                remote.append(await client.say(name, text))

            for i, text in enumerate(PLAYER_LINES[: lines - n]):
                # the side that goes first changes every line, so neither always runs on a cooler cache
                # and each line comes after a player's pause, as in play: the previous line's cache
                # update (a background prefill) is then done, on both sides, before it is timed
                sides = [local_line, remote_line] if (n + i) % 2 == 0 else [remote_line, local_line]
                for side in sides:
                    await asyncio.sleep(THINK_S)
                    await side(text)
            conversation.end()
            await client.end(f"{logs.name}-remote-{n}")
    return local, remote


@dataclass
class Load:
    """What the concurrent clients made and saw."""

    lines: list[LineTiming] = field(default_factory=list)
    sent: int = 0
    events: int = 0
    conversations: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start, server RSS MB)"""
    errors: list[str] = field(default_factory=list)
    """why a client stopped early (a dropped connection, an error message)"""


async def client_loop(url: str, index: int, deadline: float, load: Load) -> None:
    """Conversations one after another until ``deadline``; a line always gets its event."""
    try:
        client = await WsClient.connect(url)
    except Exception as exc:  # counted, not raised: the other clients go on
        load.errors.append(f"client {index}: {exc!r}")
        return
    try:
        n = 0
        while time.monotonic() < deadline:
            conversation = f"c{index}-{n}"
            await client.open(conversation, NPCS[(index + n) % len(NPCS)], f"player-{index}")
            load.conversations += 1
            for i, text in enumerate(PLAYER_LINES):
                load.sent += 1
                load.lines.append(await client.say(conversation, text))
                await client.event(conversation, *EVENTS[(index + i) % len(EVENTS)])
                load.events += 1
                if time.monotonic() >= deadline:
                    break
            await client.end(conversation)
            n += 1
    except Exception as exc:
        load.errors.append(f"client {index}: {exc!r}")
    finally:
        await client.close()


async def sample_rss(server: ServerProcess, load: Load, stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        load.rss_mb.append((time.monotonic() - start, server.rss_mb()))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    load.rss_mb.append((time.monotonic() - start, server.rss_mb()))


async def concurrency(server: ServerProcess, clients: int, seconds: float) -> Load:
    load, stop = Load(), asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server, load, stop))
    deadline = time.monotonic() + seconds
    try:
        await asyncio.gather(*(client_loop(server.ws_url, i, deadline, load) for i in range(clients)))
    finally:
        stop.set()
        await sampler
    return load


@dataclass
class Run:
    """Everything one run measured."""

    local: list[LineTiming]
    remote: list[LineTiming]
    load: Load
    local_tokens: dict[str, int]
    server_tokens: dict[str, int]
    records: list
    warm_up: list[LineTiming]
    """the server's untimed warm-up lines (logged like any other)"""


async def phases(server: ServerProcess, model: OnnxCausalLM, config: AgentConfig, args, logs: Path):
    """A warm-up line each way, the overhead lines, then the concurrent clients."""
    client = await WsClient.connect(server.ws_url)
    try:
        _, warm_up = await overhead(model, client, config, 1, logs / "warm-up")
        local, remote = await overhead(model, client, config, args.lines, logs / "timed")
    finally:
        await client.close()
    return local, remote, warm_up, await concurrency(server, args.clients, args.seconds)


def rss_slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    t, rss = np.array(samples).T
    return float(np.polyfit(t, rss, 1)[0] * 60) if np.ptp(t) > 0 else 0.0


def second_half(samples: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if not samples:
        return []
    middle = samples[-1][0] / 2
    return [sample for sample in samples if sample[0] >= middle]


def overhead_rows(run: Run) -> list[tuple[str, float, float]]:
    ms = 1000.0
    local_speed, remote_speed = decode_speeds(run.local, run.local_tokens), decode_speeds(run.remote, run.server_tokens)
    return [
        (
            "TTFT p50 ms",
            percentile([x.ttft_s for x in run.local], 50) * ms,
            percentile([x.ttft_s for x in run.remote], 50) * ms,
        ),
        (
            "TTFT p90 ms",
            percentile([x.ttft_s for x in run.local], 90) * ms,
            percentile([x.ttft_s for x in run.remote], 90) * ms,
        ),
        # the same line (same prompt, same greedy text) on both sides: the noise of the prompts cancels
        (
            "TTFT, same line paired: B - A p50 ms",
            0.0,
            percentile([b.ttft_s - a.ttft_s for a, b in zip(run.local, run.remote, strict=True)], 50) * ms,
        ),
        (
            "agent-measured TTFT p50 ms",
            percentile([x.agent_ttft_s for x in run.local], 50) * ms,
            percentile([x.agent_ttft_s for x in run.remote], 50) * ms,
        ),
        (
            "TTFT beyond the agent's p50 ms",
            percentile([x.ttft_s - x.agent_ttft_s for x in run.local], 50) * ms,
            percentile([x.ttft_s - x.agent_ttft_s for x in run.remote], 50) * ms,
        ),
        (
            "line done p50 ms",
            percentile([x.done_s for x in run.local], 50) * ms,
            percentile([x.done_s for x in run.remote], 50) * ms,
        ),
        ("decode tok/s p50", percentile(local_speed, 50), percentile(remote_speed, 50)),
        (
            "same greedy text (lines)",
            float(sum(a.text == b.text for a, b in zip(run.local, run.remote, strict=True))),
            float(len(run.local)),
        ),
    ]


def load_rows(run: Run, records: list) -> tuple[list[tuple[str, float, float]], list[str]]:
    """Rows of the concurrency phase (expected or start value, measured value) and failed checks."""
    load = run.load
    ids = {line.turn.rsplit(":", 1)[0] for line in load.lines}
    turns = [r for r in records if isinstance(r, NpcTurn)]
    capacity = [
        t
        for t in turns
        if t.conversation_id in ids and t.fallback and any(r in (t.filter_reason or "") for r in CAPACITY_REASONS)
    ]
    every_line = run.warm_up + run.remote + load.lines
    made_turns = len(every_line)
    # the agent itself records a "reply" event for every player line after an NPC line
    lines_per_conversation = Counter(line.turn.rsplit(":", 1)[0] for line in every_line)
    made_events = load.events + sum(n - 1 for n in lines_per_conversation.values())
    events = sum(isinstance(r, EngagementEvent) for r in records)
    ends = sum(isinstance(r, ConversationEnd) and r.conversation_id in ids for r in records)
    ttft = [x.ttft_s * 1000 for x in load.lines]
    rss = [mb for _, mb in load.rss_mb] or [float("nan")]
    rows = [
        ("lines received / sent", float(load.sent), float(len(load.lines))),
        ("fallbacks: capacity / all", float(len(capacity)), float(sum(x.fallback for x in load.lines))),
        ("TTFT p50 ms (incl. queue)", float("nan"), percentile(ttft, 50)),
        ("TTFT p99 ms (incl. queue)", float("nan"), percentile(ttft, 99)),
        # a line's time budget runs from its KV slot on: this is how close the slowest came to it
        ("first text to line, max s (budget)", BUDGET_S, max((x.done_s - x.ttft_s for x in load.lines), default=0.0)),
        ("server RSS MB start / end", rss[0], rss[-1]),
        ("server RSS slope MB/min", float("nan"), rss_slope_mb_per_min(load.rss_mb)),
        # the KV pool's pages are touched as conversations deepen, then reused: flat means flat here
        ("server RSS slope MB/min, 2nd half", float("nan"), rss_slope_mb_per_min(second_half(load.rss_mb))),
        ("turns made / logged", float(made_turns), float(len(turns))),
        ("events made / logged (incl. replies)", float(made_events), float(events)),
        ("conversations opened / ended", float(load.conversations), float(ends)),
    ]
    checks = {
        "every line arrives": load.sent == len(load.lines),
        "no capacity fallback": not capacity,
        "turns logged == turns made": made_turns == len(turns),
        "events logged == events made": made_events == events,
        "every conversation ended in the log": ends == load.conversations,
    }
    failed = [name for name, ok in checks.items() if not ok] + [f"client error: {e}" for e in load.errors]
    failed += [f"capacity fallback {t.conversation_id}:{t.turn_index}: {t.filter_reason}" for t in capacity]
    return rows, failed


def cell(value: float, spec: str) -> str:
    return "-" if np.isnan(value) else format(value, spec)


def print_rows(title: str, rows: list[tuple[str, float, float]]) -> list[str]:
    lines = [title]
    for name, a, b in rows:
        ratio = b / a if a else float("nan")
        lines.append(
            f"  {name:38s} {cell(a, '9.1f'):>9s} {cell(b, '9.1f'):>9s} {cell(b - a, '+9.1f'):>9s} {cell(ratio, '7.3f'):>7s}"
        )
    return lines


def report(run: Run, args, health: dict, threads: dict) -> list[str]:
    """Print the table; return the failed checks."""
    rows, failed = load_rows(run, run.records)
    print(f"bundle {health.get('bundle_id')} ({args.bundle}); greedy, seed 0, max_new_tokens {args.max_new_tokens}")
    print(
        f"onnxruntime on both sides: threads {threads['intra_op_threads'] or 'default'}, spin {threads['allow_spinning']}"
    )
    print("A: in-process (overhead), or what the clients made / the start value; B: the server\n")
    print_table(
        f"{'measure':40s} {'A':>9s} {'B':>9s} {'B - A':>9s} {'B / A':>7s}",
        [
            *print_rows(
                f"overhead: {len(run.local)} lines each way, alternating, one client on loopback",
                overhead_rows(run),
            ),
            *print_rows(f"concurrency: {args.clients} clients for {args.seconds:g} s", rows),
        ],
    )
    for problem in failed:
        print(f"FAILED: {problem}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--lines", type=int, default=20, help="overhead lines each way (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--threads", type=int, help="onnxruntime threads, both sides (default: the server's own)")
    parser.add_argument("--spin", action=argparse.BooleanOptionalAction, default=None, help="both sides")
    args = parser.parse_args()
    config = with_sampler(AgentConfig(), temperature=0.0, seed=0, max_new_tokens=args.max_new_tokens)
    sampler_args = ["--temperature", "0", "--seed", "0", "--max-new-tokens", str(args.max_new_tokens)]
    # both sides run onnxruntime alike: the server's own default for this machine, or the flags
    threads = thread_settings(args.threads, args.spin)
    sampler_args += ["--spin" if threads["allow_spinning"] else "--no-spin"]
    if threads["intra_op_threads"] is not None:
        sampler_args += ["--threads", str(threads["intra_op_threads"])]
    with tempfile.TemporaryDirectory() as tmp:
        model = OnnxCausalLM(args.bundle, SessionOptions(**threads))
        with ServerProcess(args.bundle, Path(tmp) / "server-logs", sampler_args) as server:
            health = server.wait_ready()
            local, remote, warm_up, load = asyncio.run(phases(server, model, config, args, Path(tmp)))
            status = server.stop()
        records = list(read_log_dir(Path(tmp) / "server-logs"))
        local_tokens = logged_tokens(list(read_log_dir(Path(tmp) / "timed")))
        run = Run(local, remote, load, local_tokens, logged_tokens(records), records, warm_up)
        stderr = server.stderr_tail()
    failed = report(run, args, health, threads)
    if status not in CLEAN_EXIT:
        print(f"FAILED: npcrl serve exited with status {status} after SIGINT\n{stderr}")
    return 1 if failed or status not in CLEAN_EXIT else 0


if __name__ == "__main__":
    sys.exit(main())
