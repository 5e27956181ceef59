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
shown is ``postprocess_line`` of its decoding, with the NPC's name where its card is known.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npcrl.agent.postprocess import postprocess_line

if TYPE_CHECKING:
    from npcrl.train.data import TrainingTurn

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


def cut_to_shown(
    turns: Sequence[TrainingTurn], decode: Callable[[Sequence[int]], str], npc_names: Mapping[str, str]
) -> tuple[list[TrainingTurn], ShownSummary]:
    """``turns`` each cut to the tokens its player was shown; ``npc_names``: NPC id -> the name on its
    card (how a rejected sample's text is cleaned; an NPC not in it is named by its id)."""
    out: list[TrainingTurn] = []
    cut = not_found = before = after = 0
    for turn in turns:
        ids = list(turn.response_ids)
        text = turn.text
        if turn.rejected_sample:
            text = postprocess_line(decode(ids), npc_name=npc_names.get(turn.npc_id) or turn.npc_id)
        count = shown_token_count(ids, text, decode)
        if count is None:
            not_found += 1
            count = len(ids)
        before, after = before + len(ids), after + count
        if count < len(ids):
            cut += 1
            turn = dataclasses.replace(
                turn,
                response_ids=turn.response_ids[:count],
                behaviour_logprobs=turn.behaviour_logprobs[:count],
                full_logprobs=turn.full_logprobs[:count],
            )
        out.append(turn)
    return out, ShownSummary(len(turns), cut, before, after, not_found)
