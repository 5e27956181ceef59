"""How often NPC lines contradict their persona card, with the agent's resampling off and on.

Each shipped persona answers ``--lines`` player lines (conversations of ``TURNS`` turns, the
player's lines drawn, seeded, from ``PLAYER_LINES``: half ask who the NPC is, what it does or
where the player is, the rest are ordinary questions) on the default bundle. Both modes play the
same conversations with the same seeds, so a mode's first samples are the same until a resample
changes the conversation:

* off: ``consistency_retries=None``, lines are not checked; a line counts when
  ``card_contradictions`` flags the shown model line (the model's own rate);
* on: the default ``consistency_retries`` (2): a contradicting line is sampled again; a line counts
  when the shown model line still contradicts (by construction only a checker the agent did not
  run could find one), and the table shows how many turns were resampled and how many ended in a
  fallback because every sample contradicted.

With ``--bundle`` given more than once (say a base and bundles trained from its logs), each bundle
plays the same conversations and seeds, and the last table sets each one's contradiction share
(off) beside the first bundle's; ``--modes off`` measures only the model's own rate.

The player lines and the conversation length are the persona probe's (``npcrl persona-probe``,
``npcrl.evaluation.persona_probe``), which the loop's contradiction guard plays with the check off;
this bench draws them per persona in one stream, plays one conversation at a time, and adds the
check's on mode and latency.

Usage: python bench/persona_consistency.py [--lines 200] [--seed 0] [--show 3]
       [--bundle DIR --bundle DIR ...] [--modes off,on]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from common import print_table

from npcrl.agent.consistency import CONTRADICTS_CARD, RESAMPLED, card_contradictions
from npcrl.agent.npc_agent import AgentConfig, NpcAgent, NpcLine
from npcrl.agent.persona import Persona, builtin_personas
from npcrl.evaluation.persona_probe import IDENTITY_LINES, ORDINARY_LINES, TURNS
from npcrl.paths import default_bundle_dir
from npcrl.runtime.model import OnnxCausalLM


@dataclass
class Tally:
    lines: int = 0
    contradicting: int = 0
    resampled: int = 0
    card_fallbacks: int = 0
    latencies: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, line: NpcLine, persona: Persona) -> None:
        self.lines += 1
        self.latencies.append(line.latency_s)
        reason = line.filter_reason or ""
        self.resampled += reason.startswith(RESAMPLED)
        self.card_fallbacks += reason.startswith(CONTRADICTS_CARD)
        found = [] if line.fallback or line.filtered else card_contradictions(line.text, persona)
        if found:
            self.contradicting += 1
            self.reasons.update(r.split(":")[0] for r in found)
            self.examples.append(f"{persona.id}: {line.text!r} -> {', '.join(found)}")


def play(model: OnnxCausalLM, persona: Persona, config: AgentConfig, lines: int, seed: int) -> Tally:
    tally = Tally()
    rng = random.Random(f"{seed}/{persona.id}")
    conversations = -(-lines // TURNS)
    for index in range(conversations):
        sampler = replace(config.sampler, seed=seed * 100_003 + index)
        agent = NpcAgent(model, persona, config=replace(config, sampler=sampler))
        with agent.conversation(f"bench-{index}") as talk:
            for turn in range(min(TURNS, lines - index * TURNS)):
                pool = IDENTITY_LINES if turn % 2 == 0 else ORDINARY_LINES
                tally.add(talk.respond(rng.choice(pool)), persona)
    return tally


def row(persona: str, off: Tally, on: Tally | None) -> str:
    on_cells = (
        f"{on.contradicting / on.lines:>8.3f}  {on.resampled / on.lines:>9.3f}  {on.card_fallbacks / on.lines:>9.3f}"
        if on is not None
        else f"{'-':>8}  {'-':>9}  {'-':>9}"
    )
    on_latency = f"{statistics.mean(on.latencies):>6.2f}" if on is not None else f"{'-':>6}"
    return (
        f"{persona:<11} {off.lines:>5}  {off.contradicting / off.lines:>9.3f}  {on_cells}  "
        f"{statistics.mean(off.latencies):>7.2f}  {on_latency}"
    )


def merge(into: Tally, tally: Tally) -> None:
    into.lines += tally.lines
    into.contradicting += tally.contradicting
    into.resampled += tally.resampled
    into.card_fallbacks += tally.card_fallbacks
    into.latencies += tally.latencies
    into.reasons += tally.reasons


def measure(bundle: str, modes: list[str], args: argparse.Namespace) -> Tally:
    """Play every persona with one bundle in ``modes``; print its table; the merged off-mode tally."""
    model = OnnxCausalLM(bundle)
    # no wall-clock budget: a busy machine must not turn lines into fallbacks and change the counts
    on_config = AgentConfig(time_budget_s=None)
    off_config = replace(on_config, consistency_retries=None)
    rows, examples = [], []
    total = {"off": Tally(), "on": Tally()}
    started = time.perf_counter()
    for persona in builtin_personas().values():
        off = play(model, persona, off_config, args.lines, args.seed)
        on = play(model, persona, on_config, args.lines, args.seed) if "on" in modes else None
        rows.append(row(persona.id, off, on))
        examples += off.examples[: args.show]
        merge(total["off"], off)
        if on is not None:
            merge(total["on"], on)
        print(f"[{time.perf_counter() - started:.0f} s] {rows[-1]}", file=sys.stderr, flush=True)
        print("\n".join(off.examples), file=sys.stderr, flush=True)
    rows.append(row("all", total["off"], total["on"] if "on" in modes else None))
    print(f"\nbundle {bundle}")
    print_table("persona     lines  contra off  contra on  resampled  fallback  lat off  lat on", rows)
    print(f"\nreasons (off): {dict(total['off'].reasons)}")
    print("flagged lines (off):")
    for example in examples:
        print(f"  {example}")
    return total["off"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200, help="NPC lines per persona and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="flagged lines to print per persona (off mode)")
    parser.add_argument(
        "--bundle", action="append", help="bundle directory; repeat to compare (default: the default q8 bundle)"
    )
    parser.add_argument("--modes", default="off,on", help="off (the model's own rate), on (the agent's check), or both")
    args = parser.parse_args()
    modes = [mode for mode in args.modes.split(",") if mode]
    if "off" not in modes or not set(modes) <= {"off", "on"}:
        parser.error("--modes: off, or off,on")
    bundles = args.bundle or [str(default_bundle_dir("q8"))]
    tallies = [measure(bundle, modes, args) for bundle in bundles]
    if len(bundles) > 1:
        first = tallies[0].contradicting / tallies[0].lines
        print_table(
            "bundle                                            lines  contra off  vs first",
            [
                f"{bundle[-48:]:<48} {t.lines:>6}  {t.contradicting / t.lines:>10.3f}  "
                f"{t.contradicting / t.lines - first:>+8.3f}"
                for bundle, t in zip(bundles, tallies, strict=True)
            ],
        )


if __name__ == "__main__":
    main()
