"""An NPC's prompt: the persona's system turn, as many recent exchanges as fit, the player's line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from npcrl.runtime.kvcache import common_prefix_length

Message = dict[str, str]


def chat_messages(system_prompt: str, history: Sequence[tuple[str, str]], current: str) -> list[Message]:
    """The chat of a prompt: the system turn, each (player, NPC) exchange, the player's new line."""
    messages = [{"role": "system", "content": system_prompt}]
    for player, npc in history:
        messages += [{"role": "user", "content": player}, {"role": "assistant", "content": npc}]
    return [*messages, {"role": "user", "content": current}]


def fit_prompt(
    encode: Callable[[list[Message]], list[int]],
    system_prompt: str,
    exchanges: Sequence[tuple[str, str]],
    current: str,
    budget: int,
) -> tuple[list[Message], list[int]]:
    """(messages, token ids) of the longest prompt within ``budget`` tokens: the oldest exchanges
    are dropped first; the persona always stays."""
    history = list(exchanges)
    while True:
        messages = chat_messages(system_prompt, history, current)
        ids = encode(messages)
        if len(ids) <= budget or not history:
            return messages, ids
        history.pop(0)


def prompt_stem(prompt_for: Callable[[str], list[int]]) -> list[int]:
    """The tokens a prompt has before the player's words: the prompts for two different lines, up
    to one token before where they part (that token may still merge with the player's first word)."""
    a, b = prompt_for("Hello there"), prompt_for("What now")
    return a[: max(0, common_prefix_length(a, b) - 1)]
