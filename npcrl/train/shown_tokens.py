"""Each logged line cut to the tokens its player was shown (``data.train_tokens = "shown"``).

The agent samples up to ``max_new_tokens`` tokens and shows the player a cleaned line
(``npcrl.agent.postprocess``): it drops an unfinished last sentence, another speaker's turn the model
ran on into, labels and quotes. With SmolLM2-135M and the agent's 60-token cap, 93% of the lines the
default population's play logged hit the cap and lost an unfinished tail (docs/TRAINING.md, "What
the player saw"). That tail never reached the player, so the reward says nothing about it; yet it
ends the sampled sequence, so it is where the turn's reward lands, and with GAE (lambda below 1)
it takes most of the credit: the words the player did read get the remainder. Cut to what was
shown, a line ends at the last token its shown text needs, and the reward lands there.

Finding that token: the shown text is the sampled text with pieces taken off its start and end and
whitespace and quotes taken out (plus at most a closing ellipsis), so with those characters removed
from both, it is a substring of the sampled text's decoding. The line keeps the fewest leading
tokens whose decoding holds all of it, and every token when nothing visible follows them (an end
token stays, since stopping there is part of what the player saw). A line whose shown text is not
found (a fallback line, or text the logs do not hold) is kept whole and counted.

A rejected sample (``TrainingTurn.rejected_sample``) logs no text: what the player would have been
shown is ``postprocess_line`` of its decoding, with the NPC's name where its card is known
(``SampleCutter``). The on-policy mode cuts its fresh lines the same way before the reward model
scores them (``npcrl.train.onpolicy``), and its reward model learns from cut logged lines.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npcrl.agent.persona import builtin_personas
from npcrl.agent.postprocess import postprocess_line
from npcrl.runtime.tokenizer import BundleTokenizer

if TYPE_CHECKING:
    from npcrl.runtime.bundle import Bundle
    from npcrl.train.data import TrainingData, TrainingTurn

_NOT_COMPARED = re.compile(r"[\s\"'“”‘’«»…]")
"""what cleaning may take out of a line or add to it (whitespace, quotes, a closing ellipsis)"""


@dataclass(frozen=True)
class ShownSummary:
    """What the cut did, for ``report/data.json``."""

    turns: int
    cut: int
    """turns that lost tokens the player was not shown"""
    tokens_before: int
    tokens_after: int
    not_found: int
    """turns whose shown text was not found in their sampled text (kept whole)"""


def shown_token_count(
    response_ids: Sequence[int], shown_text: str, decode: Callable[[Sequence[int]], str]
) -> int | None:
    """How many leading tokens of ``response_ids`` the player was shown ``shown_text`` from (module
    docstring); None when ``shown_text`` is empty or not in their decoding."""
    target = _NOT_COMPARED.sub("", shown_text)
    whole = _NOT_COMPARED.sub("", decode(response_ids))
    if not target or target not in whole:
        return None
    count, kept = len(response_ids), whole
    while count > 1:
        shorter = _NOT_COMPARED.sub("", decode(response_ids[: count - 1]))
        if target not in shorter:
            break
        count, kept = count - 1, shorter
    if kept == whole:
        return len(response_ids)  # nothing the player could see follows: keep an end token
    return count


@dataclass(frozen=True)
class SampleCutter:
    """Cuts samples no player was shown (a rejected sample, a fresh on-policy line) to what the agent
    would have shown: ``postprocess_line`` of the decoding, under the NPC's card name."""

    decode: Callable[[Sequence[int]], str]
    npc_names: Mapping[str, str]
    """NPC id -> the name on its card; an NPC not in it is named by its id"""

    def name_of(self, npc_id: str) -> str:
        return self.npc_names.get(npc_id) or npc_id

    def count(self, ids: Sequence[int], npc_name: str) -> int | None:
        """``shown_token_count`` of the text the agent, speaking as ``npc_name``, would have shown
        from ``ids``."""
        return shown_token_count(ids, postprocess_line(self.decode(ids), npc_name=npc_name), self.decode)


def cut_to_shown(
    turns: Sequence[TrainingTurn], decode: Callable[[Sequence[int]], str], npc_names: Mapping[str, str]
) -> tuple[list[TrainingTurn], ShownSummary]:
    """``turns`` each cut to the tokens its player was shown; ``npc_names``: NPC id -> the name on its
    card (how a rejected sample's text is cleaned; an NPC not in it is named by its id)."""
    cutter = SampleCutter(decode, npc_names)
    out: list[TrainingTurn] = []
    cut = not_found = before = after = 0
    for turn in turns:
        ids = list(turn.response_ids)
        if turn.rejected_sample:
            count = cutter.count(ids, cutter.name_of(turn.npc_id))
        else:
            count = shown_token_count(ids, turn.text, decode)
        if count is None:
            not_found += 1
            count = len(ids)
        before, after = before + len(ids), after + count
        if count < len(ids):
            cut += 1
            turn = truncated(turn, count)
        out.append(turn)
    return out, ShownSummary(len(turns), cut, before, after, not_found)


def truncated(turn: TrainingTurn, count: int) -> TrainingTurn:
    """``turn`` with its first ``count`` response tokens and their log-probs only."""
    return dataclasses.replace(
        turn,
        response_ids=turn.response_ids[:count],
        behaviour_logprobs=turn.behaviour_logprobs[:count],
        full_logprobs=turn.full_logprobs[:count],
    )


def bundle_cutter(bundle: Bundle) -> SampleCutter:
    """The cutter of ``bundle``'s lines: its own tokenizer (the one the agent decodes with) and the
    shipped cards' names."""
    names = {npc_id: persona.name for npc_id, persona in builtin_personas().items()}
    return SampleCutter(BundleTokenizer.from_bundle(bundle).decode, names)


def cut_data_to_shown(data: TrainingData, bundle: Bundle) -> None:
    """Cut ``data``'s training and holdout turns to what their players saw, in place, and record the
    training turns' cut in its report (``shown_tokens``)."""
    cutter = bundle_cutter(bundle)
    data.train, shown = cut_to_shown(data.train, cutter.decode, cutter.npc_names)
    data.holdout, _ = cut_to_shown(data.holdout, cutter.decode, cutter.npc_names)
    data.report.shown_tokens = dataclasses.asdict(shown)
