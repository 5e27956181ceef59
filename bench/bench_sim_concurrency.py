"""Simulated play per hour: ``simulate`` at concurrency 1 and at concurrency N, side by side (real model).

The same seeded conversations (the four built-in NPCs, the shipped player profiles) are played
twice on one model in one process: one at a time, then ``--concurrency`` at once (the model's
scheduler merges the NPCs' decode steps into batched passes). The model is set up as ``npcrl
simulate --concurrency N`` sets it up (``session_options_for``: 2 x N KV slots, so a live
conversation keeps its cache between turns, and whole prefills). Prints conversations per
hour, NPC lines per second and the ratio, and checks that both runs played the same
conversations: the same NPC lines in the same order (exits 1 if not).

Usage: python bench/bench_sim_concurrency.py [--bundle DIR] [--conversations 16] [--concurrency 8]
                                             [--max-new-tokens 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from npcrl import AgentConfig, OnnxCausalLM, PlayLogWriter, builtin_personas  # noqa: E402
from npcrl.agent.config import with_sampler  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.sim import SimulatedConversation, builtin_profiles, simulate  # noqa: E402
from npcrl.sim.simulate import session_options_for  # noqa: E402


def play(model: OnnxCausalLM, args, concurrency: int, logs: Path) -> tuple[float, int, list[tuple[str, ...]]]:
    """(seconds, NPC lines, each conversation's NPC lines) of one seeded run."""
    played: list[tuple[str, ...]] = []
    config = with_sampler(AgentConfig(), max_new_tokens=args.max_new_tokens)
    with PlayLogWriter(logs) as writer:
        summary = simulate(
            model,
            builtin_personas(),
            builtin_profiles(),
            writer,
            args.conversations,
            args.seed,
            agent_config=config,
            on_conversation=lambda c: played.append(lines_of(c)),
            concurrency=concurrency,
        )
    return summary.seconds, summary.turns, played


def lines_of(conversation: SimulatedConversation) -> tuple[str, ...]:
    return tuple(turn.npc_text for turn in conversation.turns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = OnnxCausalLM(args.bundle, session_options_for(args.concurrency))
    rows = []
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, args.concurrency):
            runs[concurrency] = play(model, args, concurrency, Path(tmp) / f"c{concurrency}")
    serial_s = runs[1][0]
    for concurrency, (seconds, lines, _) in runs.items():
        per_hour = args.conversations * 3600 / seconds
        rows.append(
            f"{concurrency:>11d} {args.conversations:>13d} {lines:>9d} {seconds:>9.1f} "
            f"{per_hour:>16.0f} {lines / seconds:>9.2f} {serial_s / seconds:>7.2f}"
        )
    print(f"bundle {model.bundle_id} ({args.bundle}); seed {args.seed}, max_new_tokens {args.max_new_tokens}")
    print_table(
        f"{'concurrency':>11s} {'conversations':>13s} {'NPC lines':>9s} {'seconds':>9s} "
        f"{'conversations/h':>16s} {'lines/s':>9s} {'speedup':>7s}",
        rows,
    )
    serial, concurrent = runs[1][2], runs[args.concurrency][2]
    same = sum(a == b for a, b in zip(serial, concurrent, strict=True))
    print(f"same conversations at both concurrencies: {same} of {len(serial)}")
    same = same == len(serial)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
