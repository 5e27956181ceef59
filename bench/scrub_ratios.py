"""How much scrubbing the logged prompts shifts the trainer's importance weights.

The game samples a response with the model seeing the player's words as typed; the play log keeps
the prompt with personal data masked, so the trainer scores that response under another context.
This plays short conversations whose first player line holds personal data (from
tests/data/pii_lines.jsonl; the second line is an ordinary one from tests/data/benign_lines.txt,
so its prompt differs from the model's only in the history), then scores each logged response
under both prompts with ``OnnxCausalLM.forward`` at the turn's temperature and reports:

- the per-token log-ratio log pi(a | scrubbed) - log pi(a | raw), the context shift itself;
- the turn's ratio, exp of its sum, and the share beyond the off-policy estimate's log-weight
  clip (``run.ope_log_weight_clip``);
- the trainer's per-token importance weight w = pi_old(a | scrubbed) / mu(a | raw) against its
  truncation C (``ppo.is_cap``): the share of tokens and of turns it truncates, with the same share
  for the raw prompt beside it (what the trainer would see without scrubbing).

Usage: python bench/scrub_ratios.py [--bundle DIR] [--conversations N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from npcrl.agent.npc_agent import AgentConfig, NpcAgent, with_sampler
from npcrl.agent.persona import builtin_personas
from npcrl.paths import default_bundle_dir
from npcrl.playlog import NpcTurn
from npcrl.runtime.model import OnnxCausalLM

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
IS_CAP = 2.0  # npcrl.train.config PPOConfig.is_cap (docs/TRAINING.md)
OPE_LOG_WEIGHT_CLIP = 5.0  # npcrl.train.config RunConfig.ope_log_weight_clip


class Sink:
    """Keeps the logged records in memory (what a PlayLogWriter would write)."""

    def __init__(self) -> None:
        self.turns: list[NpcTurn] = []

    def append(self, record: Any) -> None:
        if isinstance(record, NpcTurn):
            self.turns.append(record)


def response_logprobs(model: OnnxCausalLM, prompt: list[int], response: list[int], temperature: float) -> np.ndarray:
    """log pi(response token | prompt and the tokens before it) under the temperature-T softmax."""
    cache = model.new_cache()
    try:
        # the prompt's last logits predict the first response token; all logits only where needed
        first = model.forward(prompt, cache)[None, :]
        rest = model.forward(response[:-1], cache, all_logits=True) if len(response) > 1 else first[:0]
    finally:
        cache.release()
    logits = np.concatenate([first, rest])
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    logsoftmax = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return logsoftmax[np.arange(len(response)), response]


def play(model: OnnxCausalLM, conversations: int, seed: int) -> list[tuple[str, list[int], NpcTurn, Any]]:
    """(which line, the model's prompt, the logged turn, the generation) for every trainable turn."""
    pii = [json.loads(row)["text"] for row in (DATA / "pii_lines.jsonl").read_text(encoding="utf-8").splitlines()]
    benign = (DATA / "benign_lines.txt").read_text(encoding="utf-8").splitlines()
    personas = list(builtin_personas().values())
    rng = np.random.default_rng(seed)
    played = []
    for index in range(conversations):
        sink = Sink()
        config = with_sampler(AgentConfig(), seed=seed + index)
        agent = NpcAgent(model, personas[index % len(personas)], log_writer=sink, config=config)
        conversation = agent.start_conversation(f"bench-{index}")
        lines = [pii[int(rng.integers(len(pii)))], benign[int(rng.integers(len(benign)))]]
        for which, text in zip(("pii line", "history only"), lines, strict=True):
            line = conversation.respond(text)
            played.append((which, line.generation.prompt_ids if line.generation else [], sink.turns[-1], line))
        conversation.end()
    return played


def quantiles(values: np.ndarray) -> str:
    if not len(values):
        return "n/a"
    q = np.quantile(values, [0.01, 0.1, 0.5, 0.9, 0.99])
    return f"mean {values.mean():+.4f}; p1 {q[0]:+.3f} p10 {q[1]:+.3f} p50 {q[2]:+.3f} p90 {q[3]:+.3f} p99 {q[4]:+.3f}"


def score(model: OnnxCausalLM, played: list[tuple[str, list[int], NpcTurn, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(which line, per-token log-probs under both prompts and the logged mu) for each trainable turn."""
    scored = []
    for which, raw_prompt, turn, line in played:
        if not turn.response_ids or line.fallback or line.filtered:
            continue
        temperature = float(turn.sampler["temperature"])
        scored.append(
            (
                which,
                {
                    "same": turn.prompt_ids == raw_prompt,
                    "raw": response_logprobs(model, raw_prompt, turn.response_ids, temperature),
                    "scrubbed": response_logprobs(model, turn.prompt_ids, turn.response_ids, temperature),
                    "mu": np.asarray(turn.logprobs),
                },
            )
        )
    return scored


def report(rows: list[dict[str, Any]], which: str) -> None:
    shift = [row["scrubbed"] - row["raw"] for row in rows]
    tokens, per_turn = np.concatenate(shift), np.asarray([float(s.sum()) for s in shift])
    cap = np.log(IS_CAP)
    w = np.concatenate([row["scrubbed"] - row["mu"] for row in rows])
    w_raw = np.concatenate([row["raw"] - row["mu"] for row in rows])
    cut = np.mean([bool((row["scrubbed"] - row["mu"] > cap).any()) for row in rows])
    cut_raw = np.mean([bool((row["raw"] - row["mu"] > cap).any()) for row in rows])
    same = sum(row["same"] for row in rows)
    print(f"\n[{which}] {len(rows)} turns ({same} with an unchanged prompt), {len(tokens)} response tokens")
    print(f"  per-token log pi(a|scrubbed) - log pi(a|raw): {quantiles(tokens)}")
    print(f"  |per-token log-ratio| > 0.1: {np.mean(np.abs(tokens) > 0.1):.1%}, > 1: {np.mean(np.abs(tokens) > 1):.1%}")
    print(f"  turn log-ratio (sum): {quantiles(per_turn)}")
    ratio = np.exp(np.quantile(per_turn, [0.1, 0.5, 0.9]))
    print(f"  turn ratio exp(sum): p10 {ratio[0]:.3f}, median {ratio[1]:.3f}, p90 {ratio[2]:.3f}")
    beyond = np.mean(np.abs(per_turn) > OPE_LOG_WEIGHT_CLIP)
    print(f"  turns beyond the off-policy log-weight clip +-{OPE_LOG_WEIGHT_CLIP}: {beyond:.1%}")
    print(
        f"  tokens with w = pi/mu > C={IS_CAP}: scrubbed {np.mean(w > cap):.2%} (raw prompt {np.mean(w_raw > cap):.2%}); "
        f"turns with any: scrubbed {cut:.1%} (raw {cut_raw:.1%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(default_bundle_dir()))
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = OnnxCausalLM(args.bundle)
    started = time.perf_counter()
    played = play(model, args.conversations, args.seed)
    print(
        f"bundle {model.bundle_id}, {args.conversations} conversations played in {time.perf_counter() - started:.0f} s"
    )
    withheld = sum(turn.filter_reason == "withheld:personal_data" for _, _, turn, _ in played)
    untrained = sum(line.fallback or line.filtered for _, _, _, line in played)
    print(f"turns {len(played)}: fallback/filtered {untrained}, response withheld (NPC repeated the data) {withheld}")
    scored = score(model, played)
    for which in ("pii line", "history only"):
        rows = [row for kind, row in scored if kind == which]
        if rows:
            report(rows, which)
    report([row for _, row in scored], "all")


if __name__ == "__main__":
    main()
