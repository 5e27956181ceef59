"""Each rejected sample ended where it first contradicts its card (``data.rejected_tokens =
"to_contradiction"``).

The logged mode trains on the samples the agent rejected for contradicting the persona card, each
rewarded with the spec's ``contradiction_reward`` at its last token; the advantage estimate then
spreads that penalty back over every token of the sample. A sample that names the NPC wrongly and
then offers a quest is penalised for the quest offer as much as for the name. On the default
population's play the rejected samples offered quests more often than the lines players saw, and
no setup that trained on them raised quest offers, while leaving them out did (docs/RESULTS.md).
Ended at the contradicting word, a sample's penalty lands on the claim ("I'm Grimbold") and the
words that led up to it; nothing after it is trained on.

Finding that word: the text the agent checked is ``postprocess_line`` of the sample's decoding under
its card's name (``shown_tokens.SampleCutter``); ``contradiction_spans`` says where its first
contradiction ends, and the sample keeps the fewest leading tokens whose decoding holds the text up
to there (``shown_tokens.shown_token_count``). A sample whose card is unknown (a game's own card the
trainer was not given) or in which the checker finds no contradiction again (a checker changed since
the logs were written) is kept as it is, and counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npcrl.agent.consistency import contradiction_spans
from npcrl.agent.persona import Persona, cards_by_hash
from npcrl.agent.postprocess import postprocess_line
from npcrl.runtime.tokenizer import BundleTokenizer
from npcrl.train.shown_tokens import shown_token_count, truncated

if TYPE_CHECKING:
    from npcrl.runtime.bundle import Bundle
    from npcrl.train.data import TrainingData, TrainingTurn


@dataclass(frozen=True)
class ContradictionCutSummary:
    """What the cut did to the training turns' rejected samples, for ``report/data.json``."""

    rejected: int
    cut: int
    """samples that lost the tokens after their first contradiction"""
    tokens_before: int
    tokens_after: int
    not_located: int
    """samples kept whole: their card is unknown, or no contradiction was found in them again"""


def contradiction_token_count(
    ids: Sequence[int], persona: Persona, decode: Callable[[Sequence[int]], str]
) -> int | None:
    """How many leading tokens of the sample ``ids`` it takes to reach the end of its first
    contradiction of ``persona``'s card, in the text the agent would have checked; None when that
    text contradicts nothing."""
    text = postprocess_line(decode(ids), npc_name=persona.name)
    found = contradiction_spans(text, persona)
    if not found:
        return None
    return shown_token_count(ids, text[: found[0].end], decode)


def cut_rejected_to_contradiction(
    turns: Sequence[TrainingTurn], decode: Callable[[Sequence[int]], str], cards: Mapping[str, Persona]
) -> tuple[list[TrainingTurn], ContradictionCutSummary]:
    """``turns`` with each rejected sample ended at its first contradiction; ``cards``: persona hash ->
    card. Turns players saw pass unchanged."""
    out: list[TrainingTurn] = []
    rejected = cut = not_located = before = after = 0
    for turn in turns:
        if not turn.rejected_sample:
            out.append(turn)
            continue
        rejected += 1
        persona = cards.get(turn.persona_hash)
        count = None if persona is None else contradiction_token_count(turn.response_ids, persona, decode)
        if count is None:
            not_located += 1
            count = len(turn.response_ids)
        before, after = before + len(turn.response_ids), after + count
        if count < len(turn.response_ids):
            cut += 1
            turn = truncated(turn, count)
        out.append(turn)
    return out, ContradictionCutSummary(rejected, cut, before, after, not_located)


def cut_data_to_contradiction(data: TrainingData, bundle: Bundle, personas: Iterable[Persona] = ()) -> None:
    """End ``data``'s rejected samples (training and holdout) at their first contradiction, in place,
    and record the training turns' cut in its report (``rejected_tokens``); the cards are the shipped
    ones and ``personas`` (a game's own)."""
    cards = cards_by_hash(personas)
    decode = BundleTokenizer.from_bundle(bundle).decode
    data.train, summary = cut_rejected_to_contradiction(data.train, decode, cards)
    data.holdout, _ = cut_rejected_to_contradiction(data.holdout, decode, cards)
    data.report.rejected_tokens = dataclasses.asdict(summary)
