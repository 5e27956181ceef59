"""NPC turn latency on the real model, through the agent API a game uses.

Each built-in persona holds a short conversation (the same scripted player lines, fixed seeds),
blocking turns, play log on. Reports per turn: prompt tokens, time to first token, whole-turn
latency, generated tokens and decode speed; then p50/p95 over all turns.

Usage: python bench/bench_agent.py [--bundle DIR] [--turns 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcrl.agent.npc_agent import AgentConfig, NpcAgent, with_sampler  # noqa: E402
from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.playlog import PlayLogWriter  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM  # noqa: E402

PLAYER_LINES = (
    "Good day! What do you do here?",
    "Is there any work I could help with?",
    "What do you think of the other folk in the village?",
    "Thank you. I will be back tomorrow.",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_dir("q8"))
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()

    model = OnnxCausalLM(args.bundle)
    rows = []
    with tempfile.TemporaryDirectory() as logs, PlayLogWriter(logs) as writer:
        for persona in builtin_personas().values():
            agent = NpcAgent(model, persona, log_writer=writer, config=with_sampler(AgentConfig(), seed=0))
            conversation = agent.start_conversation()
            for player_line in PLAYER_LINES[: args.turns]:
                line = conversation.respond(player_line)
                result = line.generation
                rows.append(
                    {
                        "npc": persona.id,
                        "prompt": len(result.prompt_ids) if result else 0,
                        "ttft": line.time_to_first_token_s,
                        "latency": line.latency_s,
                        "tokens": len(result.token_ids) if result else 0,
                        "tok_s": result.decode_tokens_per_s if result else 0.0,
                        "flag": "filtered" if line.filtered else "fallback" if line.fallback else "",
                        "text": line.text,
                    }
                )
            conversation.end()
    print(f"bundle {model.bundle_id} ({args.bundle}); sampler {AgentConfig().sampler.to_dict()}")
    print(f"{'npc':11s} {'prompt':>6s} {'TTFT ms':>8s} {'turn ms':>8s} {'tokens':>6s} {'tok/s':>6s}  line")
    for r in rows:
        print(
            f"{r['npc']:11s} {r['prompt']:6d} {r['ttft'] * 1000:8.0f} {r['latency'] * 1000:8.0f} {r['tokens']:6d} "
            f"{r['tok_s']:6.1f}  {r['flag'] and '[' + r['flag'] + '] '}{r['text'][:70]!r}"
        )
    ttft = np.array([r["ttft"] for r in rows]) * 1000
    latency = np.array([r["latency"] for r in rows]) * 1000
    print(
        f"\nturns {len(rows)}: TTFT p50 {np.percentile(ttft, 50):.0f} ms, p95 {np.percentile(ttft, 95):.0f} ms; "
        f"turn latency p50 {np.percentile(latency, 50):.0f} ms, p95 {np.percentile(latency, 95):.0f} ms; "
        f"mean prompt {np.mean([r['prompt'] for r in rows]):.0f} tokens"
    )


if __name__ == "__main__":
    main()
