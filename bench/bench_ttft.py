"""Time to an NPC's first token, turn by turn, through the agent API (real model).

A persona of about 125 tokens makes a first-turn prompt of about 150 tokens. Each bundle plays
the same conversations (scripted player lines, fixed seeds) four ways:
  cold        no KV reuse: every prompt is prefilled whole
  prefix      the persona's system turn is cached (once per persona and bundle, warmed up
              before the conversation); the conversation's KV is kept between turns, so a later
              turn prefills only the player's new words and the closing template
  typing      as prefix, and the player's line arrives as typed (``Conversation.player_typing``
              per keystroke): the words before the last are prefilled while the player types
  genai       onnxruntime-genai on the same graph (same precision), kept generator state between
              turns (the ``rewind_to`` route): each turn appends exactly the tokens npcrl's
              *prefix* mode prefilled, then reads the logits and samples with our sampler
TTFT is from the start of the turn's generation to its first sampled token.
Targets: first turn <= 100 ms (150-token prompt), later turns <= 30 ms.

Usage: python bench/bench_ttft.py [--quants q8,q4] [--conversations 3] [--turns 4] [--no-genai]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_generation import PERSONA, SAMPLING, genai_model_dir  # noqa: E402
from bench.common import print_table  # noqa: E402

# about 20 tokens more than the generation benchmark's persona: a 150-token first-turn prompt
SYSTEM = PERSONA + " Your forge stands by the old stone bridge, and your iron comes from the Greyvein mine."
from npcrl.agent.npc_agent import AgentConfig, NpcAgent, with_sampler  # noqa: E402
from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.paths import default_bundle_dir  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM  # noqa: E402
from npcrl.runtime.sampler import Sampler, SamplerConfig  # noqa: E402

PLAYER_LINES = (
    "Good morning! Can you fix my sword before nightfall? The blade is chipped.",
    "Is there any work I could help with?",
    "What do you think of the other folk in the village?",
    "Thank you. I will be back tomorrow with the silver.",
)
GENAI_PRECISION = {"q8": "int8", "q4": "int4"}


def play(model: OnnxCausalLM, mode: str, conversations: int, turns: int) -> list[dict]:
    """Per turn: mode, turn index, prompt tokens, tokens prefilled, TTFT seconds."""
    config = with_sampler(AgentConfig(reuse_persona_prefix=mode != "cold", prompt_token_budget=1024), **SAMPLING)
    rows = []
    for c in range(conversations):
        agent = NpcAgent(model, builtin_personas()["blacksmith"], config=config, system_prompt=SYSTEM)
        agent.config = with_sampler(config, seed=c)
        agent.warm_up()
        talk = agent.start_conversation()
        for t in range(turns):
            player = PLAYER_LINES[t % len(PLAYER_LINES)]
            if mode == "typing":
                for end in range(1, len(player) + 1):
                    talk.player_typing(player[:end])
                    talk.wait_idle(30)
            talk.wait_idle(30)  # the previous turn's cache work happens while the player reads
            line = talk.respond(player)
            result = line.generation
            assert result is not None and not line.fallback, line
            rows.append(
                {
                    "mode": mode,
                    "turn": t,
                    "prompt": len(result.prompt_ids),
                    "prefilled": len(result.prompt_ids) - result.reused_tokens,
                    "ttft": result.time_to_first_token_s,
                    "prompt_ids": result.prompt_ids,
                    "reused": result.reused_tokens,
                    "line_ids": result.token_ids,
                }
            )
        talk.end()
    return rows


def genai_turns(precision: str, prefix_rows: list[dict]) -> list[dict]:
    """onnxruntime-genai with state kept between turns: each turn appends what npcrl prefilled."""
    import onnxruntime_genai as og

    model = og.Model(str(genai_model_dir(precision)))
    rows = []
    by_conversation: list[list[dict]] = []
    for row in prefix_rows:
        if row["turn"] == 0:
            by_conversation.append([])
        by_conversation[-1].append(row)
    for conv in by_conversation:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=1024, do_sample=False)
        generator = og.Generator(model, params)
        reused = conv[0]["reused"]
        generator.append_tokens(np.asarray([conv[0]["prompt_ids"][:reused]], dtype=np.int32))  # the persona
        held = reused
        for row in conv:
            ids = row["prompt_ids"]
            if held > row["reused"]:
                generator.rewind_to(row["reused"])
                held = row["reused"]
            elif held < row["reused"]:  # history npcrl had cached: genai keeps it too
                generator.append_tokens(np.asarray([ids[held : row["reused"]]], dtype=np.int32))
                held = row["reused"]
            sampler = Sampler(SamplerConfig(**SAMPLING))
            start = time.perf_counter()
            generator.append_tokens(np.asarray([ids[held:]], dtype=np.int32))
            sampler.sample(generator.get_logits()[0, -1], np.asarray(ids))
            ttft = time.perf_counter() - start
            held = len(ids)
            rows.append({**row, "mode": f"genai-{precision}", "ttft": ttft})
    return rows


def summarise(rows: list[dict]) -> dict:
    first = [r["ttft"] * 1000 for r in rows if r["turn"] == 0]
    later = [r["ttft"] * 1000 for r in rows if r["turn"] > 0]
    return {
        "first_p50": float(np.median(first)),
        "later_p50": float(np.median(later)),
        "later_p95": float(np.percentile(later, 95)),
        "prompt_first": float(np.mean([r["prompt"] for r in rows if r["turn"] == 0])),
        "prefilled_first": float(np.mean([r["prefilled"] for r in rows if r["turn"] == 0])),
        "prefilled_later": float(np.mean([r["prefilled"] for r in rows if r["turn"] > 0])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quants", default="q8,q4")
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--no-genai", action="store_true")
    args = parser.parse_args()
    table = []
    for quant in args.quants.split(","):
        model = OnnxCausalLM(default_bundle_dir(quant))
        play(model, "prefix", 1, 2)  # warm-up
        results = {mode: play(model, mode, args.conversations, args.turns) for mode in ("cold", "prefix", "typing")}
        if not args.no_genai and quant in GENAI_PRECISION:  # genai has no q8-fast counterpart
            results["genai"] = genai_turns(GENAI_PRECISION[quant], results["prefix"])
        for mode, rows in results.items():
            table.append((quant, mode if mode != "genai" else rows[0]["mode"], summarise(rows)))
    print(f"{args.conversations} conversations x {args.turns} turns; TTFT in ms (generation start to first token)")
    header = (
        f"{'bundle':6s} {'mode':11s} {'first-turn prompt':>17s} {'prefilled':>9s} {'first p50':>9s} "
        f"{'later prefilled':>15s} {'later p50':>9s} {'later p95':>9s}"
    )
    print_table(
        header,
        (
            f"{quant:6s} {mode:11s} {s['prompt_first']:17.0f} {s['prefilled_first']:9.1f} {s['first_p50']:9.1f} "
            f"{s['prefilled_later']:15.1f} {s['later_p50']:9.1f} {s['later_p95']:9.1f}"
            for quant, mode, s in table
        ),
    )


if __name__ == "__main__":
    main()
