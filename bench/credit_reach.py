"""How much of a line's reward reaches the words the players reward, at a given GAE lambda.

A logged line earns its reward at its last token; generalised advantage estimation carries it back
to a token ``k`` steps before the end with weight ``(gamma * lam) ** k`` (plus what the value head
adds, which on this project's runs is close to nothing: docs/TRAINING.md, "Where in a line the
credit lands"). So what a line says early gets less of the credit than how it ends.

For each play-log directory (a round's training play, say) and each feature the simulated players
read from a line's wording (``asks_back``, ``offers_quest``, ``mentions_lore``;
``npcrl.sim.features.evidence_positions``): the share of NPC lines that have it; where its first
word sits (the median share of the line before it) and how many tokens follow its first and its
last word (the median; a line's words are mapped onto its logged tokens in proportion); and the
mean weight the line's reward reaches each of the two with. The row ``every token`` is the mean
weight over all of a line's tokens, for comparison.

Usage: python bench/credit_reach.py LOGS [LOGS ...] [--lam 0.95] [--gamma 1.0] [--personas DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcrl.agent.persona import Persona, builtin_personas, load_personas  # noqa: E402
from npcrl.errors import NpcrlError  # noqa: E402
from npcrl.playlog import LogReader, NpcTurn  # noqa: E402
from npcrl.sim.features import evidence_positions, words  # noqa: E402

FEATURES = ("asks_back", "offers_quest", "mentions_lore")


@dataclass
class Reach:
    """One feature's lines: where its first word sat, and the tokens after its first and its last word."""

    lines: int = 0
    share_before: list[float] = field(default_factory=list)
    after_first: list[int] = field(default_factory=list)
    after_last: list[int] = field(default_factory=list)


def npc_lines(log_dir: Path) -> list[NpcTurn]:
    """The directory's NPC turns, one per (conversation, turn) (a retried write is one line)."""
    if not log_dir.is_dir():
        raise SystemExit(f"{log_dir}: no such play-log directory")
    turns: dict[tuple[str, int], NpcTurn] = {}
    for record in LogReader(log_dir):
        if isinstance(record, NpcTurn):
            turns[(record.conversation_id, record.turn_index)] = record
    return [turns[key] for key in sorted(turns)]


def reach(turns: list[NpcTurn], personas: dict[str, Persona], decay: float) -> tuple[dict[str, Reach], float]:
    """Per feature, where its evidence sat; and the mean weight ``decay ** tokens_after`` over every
    token of every line."""
    found = {name: Reach() for name in FEATURES}
    every: list[float] = []
    for turn in turns:
        persona = personas.get(turn.npc_id)
        if persona is None:
            raise NpcrlError(
                f"conversation {turn.conversation_id} is with NPC {turn.npc_id!r}, whose card is not given"
            )
        count, steps = len(words(turn.text)), len(turn.response_ids)
        if not count or not steps:
            continue
        every.append(sum(decay**k for k in range(steps)) / steps)
        for name, indices in evidence_positions(turn.text, persona).items():
            if not indices:
                continue
            feature = found[name]
            feature.lines += 1
            feature.share_before.append(indices[0] / count)
            feature.after_first.append(_tokens_after(indices[0], count, steps))
            feature.after_last.append(_tokens_after(indices[-1], count, steps))
    return found, statistics.fmean(every) if every else float("nan")


def _tokens_after(index: int, count: int, steps: int) -> int:
    """Tokens after word ``index`` of ``count`` words, the line's ``steps`` tokens spread evenly over them."""
    return round((count - 1 - index) * (steps - 1) / max(1, count - 1))


def table(turns: list[NpcTurn], personas: dict[str, Persona], decay: float) -> list[str]:
    found, every = reach(turns, personas, decay)
    rows = [
        "| feature | lines with it | line before the first word | tokens after the first | its weight "
        "| tokens after the last | its weight |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, feature in found.items():
        if not feature.lines:
            rows.append(f"| {name} | 0 | – | – | – | – | – |")
            continue
        cells = [f"{feature.lines / len(turns):.3f}", f"{statistics.median(feature.share_before):.2f}"]
        for after in (feature.after_first, feature.after_last):
            cells += [f"{statistics.median(after):.0f}", f"{statistics.fmean(decay**k for k in after):.3f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append(f"| every token | {len(turns)} lines | – | – | {every:.3f} | – | – |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="play-log directories")
    parser.add_argument("--lam", type=float, default=0.95, help="GAE lambda (the trainer's ppo.lam)")
    parser.add_argument("--gamma", type=float, default=1.0, help="discount (the trainer's ppo.gamma)")
    parser.add_argument("--personas", default=None, help="persona directory (default: the built-in NPCs)")
    args = parser.parse_args()
    personas = dict(load_personas(args.personas) if args.personas else builtin_personas())
    for logs in args.logs:
        turns = npc_lines(Path(logs))
        print(f"\n{logs}: {len(turns)} NPC lines, lambda {args.lam}, gamma {args.gamma}\n")
        print("\n".join(table(turns, personas, args.gamma * args.lam)))


if __name__ == "__main__":
    main()
