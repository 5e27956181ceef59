"""From a generation to the line a player sees: streaming under the time budget, post-processing,
the output filter, and the persona's fallback line when any of it fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from npcrl.agent.pending import NpcLine, PendingLine
from npcrl.agent.postprocess import postprocess_line
from npcrl.agent.speaker import Speaker
from npcrl.runtime.generation import Generation, GenerationResult

FinalText = tuple[str, bool, bool, str | None]
"""(displayed text, filtered, fallback, reason)"""


def stream_into(
    generation: Generation, pending: PendingLine, budget_s: float | None, clean: Callable[[str], str]
) -> None:
    """Run ``generation``, pushing its text (through ``clean``) to ``pending``. The time budget
    starts once the generation holds its KV slot: waiting in line behind other NPCs is not the
    turn's fault."""
    watchdogs: list[threading.Timer] = []

    def arm() -> None:
        if budget_s is not None:
            watchdog = threading.Timer(budget_s, pending.cancel_token.cancel)
            watchdog.daemon = True
            watchdogs.append(watchdog)
            watchdog.start()

    generation.on_admitted = arm
    try:
        for chunk in generation:
            if chunk.text:
                pending.push_text(clean(chunk.text))
    finally:
        for watchdog in watchdogs:
            watchdog.cancel()


def final_text(
    speaker: Speaker, special_tokens: Sequence[str], result: GenerationResult | None, error: str | None, turn: int
) -> FinalText:
    """What the NPC says after turn ``turn``: the post-processed line if it passes the filter,
    else one of the persona's fallback lines, with the reason."""
    persona = speaker.persona
    if result is None:
        return persona.fallback_line(turn), False, True, f"error:{error}"
    if result.stop_reason == "cancelled":
        return persona.fallback_line(turn), False, True, "cancelled_or_time_budget"
    text = postprocess_line(
        result.text,
        npc_name=persona.name,
        special_tokens=special_tokens,
        max_chars=speaker.config.max_line_chars,
    )
    if not text:
        return persona.fallback_line(turn), False, True, "empty_after_postprocess"
    verdict = speaker.output_filter.check(text)
    if not verdict.allowed:
        return persona.fallback_line(turn), True, False, verdict.reason
    return text, False, False, None


def make_line(
    final: FinalText, turn_index: int, result: GenerationResult | None, started: float, waited: float
) -> NpcLine:
    """The ``NpcLine`` of a turn that began at ``started`` (``perf_counter``) and waited ``waited``
    seconds for its persona prefix."""
    text, filtered, fallback, reason = final
    return NpcLine(
        turn_index=turn_index,
        text=text,
        filtered=filtered,
        fallback=fallback,
        filter_reason=reason,
        latency_s=time.perf_counter() - started,
        time_to_first_token_s=result.time_to_first_token_s if result else 0.0,
        stop_reason=result.stop_reason if result else "error",
        generation=result,
        queue_s=waited + (result.queue_s if result else 0.0),
    )
