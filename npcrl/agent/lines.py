"""From a generation to the line a player sees: streaming under the time budget, post-processing,
the output filter, the persona-card check, and the persona's fallback line when any of it fails.

A line that contradicts the card gets ``CONTRADICTS_CARD`` as its reason; the conversation then
samples the prompt again (``AgentConfig.consistency_retries``). Only a turn's first sample is
streamed: text already pushed to the ``PendingLine`` cannot be taken back, so a resampled line
arrives whole as the final ``NpcLine.text``, which replaces what streamed, as it already does for
a trimmed, filtered or fallback line (a game shows the final text; docs/GAME.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from npcrl.agent.consistency import CONTRADICTS_CARD, card_contradictions
from npcrl.agent.pending import NpcLine, PendingLine
from npcrl.agent.postprocess import postprocess_line
from npcrl.agent.speaker import Speaker
from npcrl.runtime.generation import Generation, GenerationResult
from npcrl.runtime.kvcache import KVCache
from npcrl.runtime.model import OnnxCausalLM

log = logging.getLogger("npcrl.agent.lines")

FinalText = tuple[str, bool, bool, str | None]
"""(displayed text, filtered, fallback, reason)"""


def stream_into(
    generation: Generation,
    pending: PendingLine,
    budget_s: float | None,
    clean: Callable[[str], str],
    *,
    show: bool = True,
) -> None:
    """Run ``generation``, pushing its text (through ``clean``) to ``pending`` unless ``show`` is
    False (a resample). The time budget starts once the generation holds its KV slot: waiting in
    line behind other NPCs is not the turn's fault."""
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
            if chunk.text and show:
                pending.push_text(clean(chunk.text))
    finally:
        for watchdog in watchdogs:
            watchdog.cancel()


def final_text(
    speaker: Speaker, special_tokens: Sequence[str], result: GenerationResult | None, error: str | None, turn: int
) -> FinalText:
    """What the NPC says after turn ``turn``: the post-processed line if it passes the filter and
    (unless ``consistency_retries`` is None) does not contradict the persona card, else one of the
    persona's fallback lines, with the reason."""
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
    if speaker.config.consistency_retries is not None:
        contradictions = card_contradictions(text, persona)
        if contradictions:
            return persona.fallback_line(turn), False, True, CONTRADICTS_CARD + ",".join(contradictions)
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


def contradicts_card(line: NpcLine) -> bool:
    """The line is a fallback because its sample contradicted the persona card."""
    return line.fallback and (line.filter_reason or "").startswith(CONTRADICTS_CARD)


@dataclass(frozen=True)
class Retry:
    """One more sample of a turn's prompt: after ``previous`` (whose prompt and cache it reuses)."""

    previous: Generation
    attempt: int
    """1 for the first resample; a seeded sampler gets seed + ``attempt``: new, yet reproducible"""
    budget_s: float | None
    """what is left of the turn's time budget"""
    started: float
    """``perf_counter`` when the turn began (time to first token counts from there)"""
    prefix: KVCache | None
    """the persona's prefix cache, when the prompt starts with it"""


def resample(
    speaker: Speaker, model: OnnxCausalLM, pending: PendingLine, retry: Retry
) -> tuple[Generation, GenerationResult | None, str | None]:
    """Sample the prompt of ``retry.previous`` again without streaming it: (generation, result,
    error). Nothing raised by the model leaves: an error becomes the reason of a fallback line."""
    config = speaker.config
    sampler = config.sampler
    if sampler.seed is not None:
        sampler = replace(sampler, seed=(sampler.seed + retry.attempt) % (1 << 64))
    generation = model.generate(
        retry.previous.prompt_ids,
        sampler,
        cancel=pending.cancel_token,
        prefix_cache=retry.prefix,
        cache=retry.previous.cache if config.reuse_persona_prefix else None,
        started_at=retry.started,
    )
    try:
        stream_into(generation, pending, retry.budget_s, model.tokenizer.strip_special_tokens, show=False)
    except Exception as exc:
        log.exception("NPC %s failed to resample a line; answering with a fallback line", speaker.npc_id)
        return generation, None, f"{type(exc).__name__}: {exc}"
    return generation, generation.result, None
