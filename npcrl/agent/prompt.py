"""An NPC's prompt: the persona's system turn, as many recent exchanges as fit, the player's line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from npcrl.runtime.kvcache import common_prefix_length

Message = dict[str, str]


def chat_messages(system_prompt: str, history: Sequence[tuple[str, str]], current: str) -> list[Message]:
    """The chat of a prompt: the system turn, each (player, NPC) exchange, the player's new line."""
    messages = [{"role": "system", "content": system_prompt}]
    for player, npc in history:
        messages += [{"role": "user", "content": player}, {"role": "assistant", "content": npc}]
    return [*messages, {"role": "user", "content": current}]


class FittedPrompt(NamedTuple):
    messages: list[Message]
    ids: list[int]
    first: int
    """the index of the oldest exchange the prompt still shows"""


def fit_prompt(
    encode: Callable[[list[Message]], list[int]],
    system_prompt: str,
    exchanges: Sequence[tuple[str, str]],
    current: str,
    budget: int,
    first: int = 0,
    margin: int = 0,
) -> FittedPrompt:
    """The prompt of the persona, ``exchanges[first:]`` and ``current`` when it is within ``budget``
    tokens; else the oldest exchanges are dropped until it is within ``budget - margin``, or until
    only the newest is left if that fits the budget (or none is left if not); the persona always
    stays.

    Dropping an exchange changes every later position of the prompt, so everything after the
    persona is prefilled again. Dropped one at a time, a long conversation would pay that on every
    turn; dropped until ``margin`` tokens are free, the next turns append to the cached
    conversation until the budget is reached again."""
    shown = max(0, min(first, len(exchanges)))
    messages = chat_messages(system_prompt, exchanges[shown:], current)
    ids = encode(messages)
    if len(ids) <= budget:
        return FittedPrompt(messages, ids, shown)
    while shown < len(exchanges):
        shown += 1
        messages = chat_messages(system_prompt, exchanges[shown:], current)
        ids = encode(messages)
        # the margin is made room for, but never by dropping the newest exchange
        if len(ids) <= budget - margin or (len(ids) <= budget and shown == len(exchanges) - 1):
            break
    return FittedPrompt(messages, ids, shown)


def prompt_stem(prompt_for: Callable[[str], list[int]]) -> list[int]:
    """The tokens a prompt has before the player's words: the prompts for two different lines, up
    to one token before where they part (that token may still merge with the player's first word)."""
    a, b = prompt_for("Hello there"), prompt_for("What now")
    return a[: max(0, common_prefix_length(a, b) - 1)]
