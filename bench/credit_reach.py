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

With ``--tokenizer`` (a bundle's ``tokenizer.json``) the shown words are mapped onto the tokens the
player was shown (``npcrl.train.shown_tokens``), and the unseen tail the agent cut off (docs/TRAINING.md,
"What the player saw") counts among the tokens after them, as the trainer with ``data.train_tokens =
"sampled"`` sees it; without it the words are spread over all the sampled tokens, tail included.

Usage: python bench/credit_reach.py LOGS [LOGS ...] [--lam 0.95] [--gamma 1.0] [--tokenizer JSON] [--personas DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcrl.agent.persona import Persona, builtin_personas, load_personas  # noqa: E402
from npcrl.errors import NpcrlError  # noqa: E402
from npcrl.playlog import LogReader, NpcTurn  # noqa: E402
from npcrl.reward.engagement import group_conversations  # noqa: E402
from npcrl.sim.features import evidence_positions, words  # noqa: E402
from npcrl.train.shown_tokens import shown_token_count  # noqa: E402

FEATURES = ("asks_back", "offers_quest", "mentions_lore")


@dataclass
class Reach:
    """One feature's lines: where its first word sat, and the tokens after its first and its last word."""

    lines: int = 0
    share_before: list[float] = field(default_factory=list)
    after_first: list[int] = field(default_factory=list)
    after_last: list[int] = field(default_factory=list)


Decode = Callable[[Sequence[int]], str]


def npc_lines(log_dir: Path) -> list[NpcTurn]:
    """The directory's NPC turns, one per (conversation, turn) (a retried write is one line)."""
    if not log_dir.is_dir():
        raise SystemExit(f"{log_dir}: no such play-log directory")
    conversations = group_conversations(LogReader(log_dir))
    return [log.turns[i] for _, log in sorted(conversations.items()) for i in sorted(log.turns)]


def reach(
    turns: list[NpcTurn], personas: dict[str, Persona], decay: float, decode: Decode | None = None
) -> tuple[dict[str, Reach], float, list[int]]:
    """Per feature, where its evidence sat; the mean weight ``decay ** tokens_after`` over every
    token of every line; and each line's unseen tail in tokens (all 0 without ``decode``)."""
    found = {name: Reach() for name in FEATURES}
    every: list[float] = []
    tails: list[int] = []
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
        shown = (shown_token_count(turn.response_ids, turn.text, decode) if decode else None) or steps
        tail = steps - shown
        tails.append(tail)
        for name, indices in evidence_positions(turn.text, persona).items():
            if not indices:
                continue
            feature = found[name]
            feature.lines += 1
            feature.share_before.append(indices[0] / count)
            feature.after_first.append(_tokens_after(indices[0], count, shown) + tail)
            feature.after_last.append(_tokens_after(indices[-1], count, shown) + tail)
    return found, statistics.fmean(every) if every else float("nan"), tails


def _tokens_after(index: int, count: int, steps: int) -> int:
    """Tokens after word ``index`` of ``count`` words, the line's ``steps`` tokens spread evenly over them."""
    return round((count - 1 - index) * (steps - 1) / max(1, count - 1))


def table(turns: list[NpcTurn], personas: dict[str, Persona], decay: float, decode: Decode | None = None) -> list[str]:
    found, every, tails = reach(turns, personas, decay, decode)
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
    if decode is not None and tails:
        cut = [t for t in tails if t]
        rows.append(
            f"\nunseen tail: {len(cut)} of {len(tails)} lines ({len(cut) / len(tails):.0%}), "
            f"{statistics.fmean(cut) if cut else 0:.1f} tokens each on average"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="play-log directories")
    parser.add_argument("--lam", type=float, default=0.95, help="GAE lambda (the trainer's ppo.lam)")
    parser.add_argument("--gamma", type=float, default=1.0, help="discount (the trainer's ppo.gamma)")
    parser.add_argument("--personas", default=None, help="persona directory (default: the built-in NPCs)")
    parser.add_argument(
        "--tokenizer", default=None, help="the logs' tokenizer.json (a bundle's): map words onto shown tokens"
    )
    args = parser.parse_args()
    personas = dict(load_personas(args.personas) if args.personas else builtin_personas())
    decode = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        path = Path(args.tokenizer)
        if not path.is_file():
            raise SystemExit(f"{path}: no such tokenizer file")
        tokenizer = Tokenizer.from_file(str(path))

        def decode(ids: Sequence[int]) -> str:
            return tokenizer.decode(list(ids), skip_special_tokens=True)

    for logs in args.logs:
        turns = npc_lines(Path(logs))
        print(f"\n{logs}: {len(turns)} NPC lines, lambda {args.lam}, gamma {args.gamma}\n")
        print("\n".join(table(turns, personas, args.gamma * args.lam, decode)))


if __name__ == "__main__":
    main()
