"""Several NPCs generating at once on one model, while a 60 fps game loop ticks (real model, headless).

The main thread runs a frame loop like a game's: each frame does about 1.5 ms of Python work
(the demo's own frame work is 1-3 ms), polls every NPC's pending line, and sleeps until the next
1/60 s tick. Meanwhile N NPCs (the built-in personas, cycled) each answer scripted player lines
back to back through ``respond_async``; a conversation ends after four turns and a new one starts,
so prompts stay game-sized. Each scenario runs ``--seconds``.

onnxruntime settings compared side by side (each a fresh model on the same bundle):
  batched   one intra-op thread, no spinning (what the game picks on <= 2 cores); concurrent
            decode steps of the NPCs run as one batched pass (the default scheduler)
  serial    the same, with batching off: passes run one after another
  batched-2t  batched with two spinning intra-op threads (npcrl's default on bigger machines)
Reports frame interval p50/p95/p99/max (frame start to next frame start), the share of frames
over 20 ms, total generated tokens/s and its ratio to one NPC alone, and how many decode steps
a merged pass held on average. Target: p99 <= 20 ms with >= 4 NPCs generating.

Usage: python bench/bench_npcs.py [--bundle DIR] [--npcs 4] [--seconds 20] [--configs batched,serial,batched-2t]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from npcrl.agent.npc_agent import AgentConfig, NpcAgent, PendingLine, with_sampler  # noqa: E402
from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM, SessionOptions  # noqa: E402

FRAME_S = 1 / 60
TARGET_P99_MS = 20.0
CONFIGS = {
    "batched": SessionOptions(intra_op_threads=1, allow_spinning=False),
    "serial": SessionOptions(intra_op_threads=1, allow_spinning=False, batch_decode=False),
    "batched-2t": SessionOptions(intra_op_threads=2, allow_spinning=True),
}
PLAYER_LINES = (
    "Good day! What do you do here?",
    "Is there any work I could help with?",
    "What do you think of the other folk in the village?",
    "Thank you. I will be back tomorrow.",
)


class Talker:
    """One NPC answering a scripted player back to back."""

    def __init__(self, agent: NpcAgent) -> None:
        self.agent = agent
        self.conversation = agent.start_conversation()
        self.pending: PendingLine | None = None
        self.turn = 0
        self.ttft: list[float] = []

    def step(self) -> None:
        if self.pending is not None and not self.pending.done:
            self.pending.poll()
            return
        if self.pending is not None:
            line = self.pending.result(timeout=0)
            if line.generation is not None:
                self.ttft.append(line.time_to_first_token_s)
            self.turn += 1
            if self.turn % len(PLAYER_LINES) == 0:
                self.conversation.end()
                self.conversation = self.agent.start_conversation()
        self.pending = self.conversation.respond_async(PLAYER_LINES[self.turn % len(PLAYER_LINES)])

    def stop(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending.result(timeout=30)
        self.conversation.end()


def frame_work(seconds: float = 0.0015) -> None:
    """Busy Python work standing in for a game's events, logic and drawing."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def run_scenario(model: OnnxCausalLM, npcs: int, seconds: float) -> dict:
    personas = list(builtin_personas().values())
    config = with_sampler(AgentConfig(), seed=0)
    talkers = [Talker(NpcAgent(model, personas[i % len(personas)], config=config)) for i in range(npcs)]
    for talker in talkers:
        talker.agent.warm_up()
    passes, rows = model.scheduler.batched_passes, model.scheduler.batched_rows
    sampled = model.sampled_tokens
    intervals: list[float] = []
    start = last = time.perf_counter()
    next_tick = start + FRAME_S
    while last - start < seconds:
        for talker in talkers:
            talker.step()
        frame_work()
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.perf_counter()
        next_tick = max(next_tick + FRAME_S, now)
        intervals.append(now - last)
        last = now
    elapsed = last - start
    tokens = model.sampled_tokens - sampled  # lines still streaming at the end count too
    for talker in talkers:
        talker.stop()
    batched_passes = model.scheduler.batched_passes - passes
    return {
        "npcs": npcs,
        "interval_ms": np.array(intervals) * 1000,
        "tok_s": tokens / elapsed,
        "ttft_ms": np.array([x for t in talkers for x in t.ttft]) * 1000,
        "rows_per_pass": (model.scheduler.batched_rows - rows) / max(1, batched_passes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--npcs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--configs", default="batched,serial,batched-2t")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=1.0,
        help="Python's GIL switch interval (the demo sets 1 ms; Python's default is 5)",
    )
    args = parser.parse_args()
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    results = []
    for name in args.configs.split(","):
        model = OnnxCausalLM(args.bundle, CONFIGS[name])
        run_scenario(model, 1, 2.0)  # warm-up
        for npcs in (1, args.npcs):
            results.append((name, run_scenario(model, npcs, args.seconds)))
            print(f"[{name}] {npcs} NPCs done", file=sys.stderr, flush=True)
    print(
        f"bundle {args.bundle.name}; {os.cpu_count()} CPUs; 60 fps loop, {args.seconds:.0f} s per row; "
        f"GIL switch interval {args.switch_interval_ms:g} ms"
    )
    header = (
        f"{'config':11s} {'NPCs':>4s} {'frames':>6s} {'p50':>6s} {'p95':>6s} {'p99':>6s} {'max':>6s} {'>20ms':>6s} "
        f"{'tok/s':>6s} {'x 1 NPC':>7s} {'rows/pass':>9s} {'TTFT p50':>8s} {'p99<=20':>7s}"
    )
    alone: dict[str, float] = {}
    lines = []
    for name, r in results:
        iv = r["interval_ms"]
        p99 = float(np.percentile(iv, 99))
        if r["npcs"] == 1:
            alone[name] = r["tok_s"]
        ttft = float(np.median(r["ttft_ms"])) if len(r["ttft_ms"]) else float("nan")
        lines.append(
            f"{name:11s} {r['npcs']:4d} {len(iv):6d} {np.percentile(iv, 50):6.1f} {np.percentile(iv, 95):6.1f} "
            f"{p99:6.1f} {iv.max():6.1f} {(iv > TARGET_P99_MS).mean() * 100:5.1f}% {r['tok_s']:6.1f} "
            f"{r['tok_s'] / alone[name]:7.2f} {r['rows_per_pass']:9.2f} {ttft:8.0f} "
            f"{'yes' if p99 <= TARGET_P99_MS else 'NO':>7s}"
        )
    print_table(header, lines)


if __name__ == "__main__":
    main()
