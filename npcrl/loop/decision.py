"""The promotion decision: does a round's candidate replace the current bundle?

A candidate is promoted only when it engages more *and* passes every guard against reward hacking
and language damage (KL to the base, perplexity, repetition, line length, persona-card
contradictions). ``decide`` is pure: it
reads the evaluation rows of the two bundles (``npcrl.evaluation.metric_names``) and says why,
either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from npcrl.evaluation.metric_names import (
    CARD_CONTRADICTIONS,
    CARD_CONTRADICTIONS_RISE,
    ENGAGEMENT,
    KL_PER_LINE,
    PAIRED_GAIN,
    PERPLEXITY,
    REPETITION_RATE,
    WORDS_PER_LINE,
)
from npcrl.evaluation.persona_probe import probe_rise


@dataclass(frozen=True)
class Guards:
    """Limits a winning candidate must also respect."""

    max_kl_per_line: float = 5.0
    """KL to the base bundle, nats per NPC line"""
    max_perplexity_increase: float = 0.15
    """held-out persona perplexity may rise by at most this fraction of the base's"""
    max_repetition_increase: float = 0.05
    """repetition rate may rise by at most this much (absolute) over the current bundle; bases repeat
    in 1-2% of lines, and a probe over-optimised for two more iterations took it from 0.014 to 0.089
    (docs/RESULTS.md), which +0.10 let through"""
    max_length_ratio: float = 1.5
    """words per line may grow by at most this factor over the current bundle (length hacking)"""
    max_contradiction_increase: float = 0.02
    """the share of lines contradicting the persona card (``CARD_CONTRADICTIONS``) may rise by at
    most this much (absolute) over the current bundle; the guard when no persona probe ran"""
    persona_probe_lines: int = 0
    """> 0: both bundles answer the persona probe (``npcrl.evaluation.persona_probe``), this many
    lines per persona, and the contradiction guard vetoes a candidate whose probe share rose
    beyond chance (the paired 95% interval of the rise above 0) instead of reading the evaluation's
    play, whose few contradicting lines cannot tell a rise from noise; 0: no probe"""


PROMOTE_WHEN = ("better", "significant")
"""``better``: the candidate's mean engagement is higher; ``significant``: the lower end of the paired
95% interval of its gain is above 0 (conversations with the same players and seeds compared)"""

GUARD_PREFIX = "guard:"
"""starts each reason that vetoes a promotion"""


def estimate(value: Any) -> float:
    """A row's point estimate: the first item of an interval ``(estimate, low, high)``, or the number."""
    return float(value[0]) if isinstance(value, (tuple, list)) else float(value)


def exceeds(value: float, limit: float) -> bool:
    """A guard metric over its limit; NaN counts as over (``nan > limit`` is False, which would pass it)."""
    return not math.isfinite(value) or value > limit


def check_promote_when(promote_when: str) -> None:
    if promote_when not in PROMOTE_WHEN:
        raise ValueError(f"promote_when must be one of {', '.join(PROMOTE_WHEN)}, got {promote_when!r}")


def decide(
    candidate: Mapping[str, Any],
    current: Mapping[str, Any],
    base_perplexity: float,
    guards: Guards,
    promote_when: str = "better",
) -> tuple[bool, list[str]]:
    """(promote?, reasons). Pure: the rows are ``npcrl eval`` metrics of the two bundles; the
    candidate's may hold the paired gain (``PAIRED_GAIN``), which ``promote_when="significant"`` needs."""
    check_promote_when(promote_when)
    wins, reasons = engagement_verdict(candidate, current, promote_when)
    broken = guard_reasons(candidate, current, base_perplexity, guards)
    return wins and not broken, reasons + probe_note(candidate, current) + broken


def decide_pooled(
    fresh: tuple[Mapping[str, Any], Mapping[str, Any]],
    pooled: tuple[Mapping[str, Any], Mapping[str, Any]],
    base_perplexity: float,
    guards: Guards,
    promote_when: str = "better",
) -> tuple[bool, list[str]]:
    """(promote?, reasons) once fresh players have joined the evaluation players. ``fresh``: the
    (candidate, current) rows on the fresh players, whose guards must hold too; ``pooled``: the same
    pair's engagement (and the candidate's paired gain) over the pairs of both sets together, which
    the ``promote_when`` rule reads. One test on all the players: more power at the same 95% than
    asking each set for its own win."""
    check_promote_when(promote_when)
    wins, reasons = engagement_verdict(pooled[0], pooled[1], promote_when)
    broken = [f"{r} (fresh players)" for r in guard_reasons(fresh[0], fresh[1], base_perplexity, guards)]
    return wins and not broken, reasons + broken


def engagement_verdict(
    candidate: Mapping[str, Any], current: Mapping[str, Any], promote_when: str
) -> tuple[bool, list[str]]:
    """Whether the candidate engages more by the ``promote_when`` rule, and the reasons that say so."""
    paired = candidate.get(PAIRED_GAIN)
    ours, theirs = estimate(candidate[ENGAGEMENT]), estimate(current[ENGAGEMENT])
    if promote_when == "significant":
        wins = paired is not None and float(paired[1]) > 0
        verdict = "significantly better" if wins else "not significantly better"
    else:
        wins = ours > theirs
        verdict = "better" if wins else "not better"
    reasons = [f"engagement {ours:.3f} vs {theirs:.3f} ({verdict})"]
    if paired is not None:
        reasons.append(
            f"paired gain {float(paired[0]):+.3f} per conversation, 95% CI [{paired[1]:.3f}, {paired[2]:.3f}]"
        )
    return wins, reasons


def guard_reasons(
    candidate: Mapping[str, Any], current: Mapping[str, Any], base_perplexity: float, guards: Guards
) -> list[str]:
    """One ``guard:`` reason per guard the candidate breaks (none: it may be promoted)."""
    reasons = []
    kl = estimate(candidate[KL_PER_LINE])
    if exceeds(kl, guards.max_kl_per_line):
        reasons.append(f"{GUARD_PREFIX} KL to base {kl:.2f} nats/line > {guards.max_kl_per_line}")
    perplexity, limit = estimate(candidate[PERPLEXITY]), base_perplexity * (1 + guards.max_perplexity_increase)
    if exceeds(perplexity, limit):
        reasons.append(f"{GUARD_PREFIX} perplexity {perplexity:.2f} > {limit:.2f}")
    repetition = estimate(candidate[REPETITION_RATE]) - estimate(current[REPETITION_RATE])
    if exceeds(repetition, guards.max_repetition_increase):
        reasons.append(f"{GUARD_PREFIX} repetition rate rose by {repetition:.2f}")
    words, current_words = estimate(candidate[WORDS_PER_LINE]), estimate(current[WORDS_PER_LINE])
    if current_words > 0 and exceeds(words, guards.max_length_ratio * current_words):
        reasons.append(f"{GUARD_PREFIX} words per line {words:.1f} > {guards.max_length_ratio}x {current_words:.1f}")
    reasons += contradiction_reasons(candidate, current, guards)
    return reasons


def contradiction_reasons(candidate: Mapping[str, Any], current: Mapping[str, Any], guards: Guards) -> list[str]:
    """The contradiction guard's vetoes. Where both bundles answered the same persona probe: a paired
    rise beyond chance (the lower end of its 95% interval above 0) on the probe, or in the
    evaluation's play (``CARD_CONTRADICTIONS_RISE``). Otherwise the play's rise above
    ``max_contradiction_increase``, which is all a few hundred lines of play can guard by."""
    probe = probe_rise(candidate, current)
    if probe is None:
        contradiction = contradiction_increase(candidate, current)
        if contradiction is not None and exceeds(contradiction, guards.max_contradiction_increase):
            return [f"{GUARD_PREFIX} card contradictions per line rose by {contradiction:.3f}"]
        return []
    vetoes = []
    if exceeds(probe[1], 0.0):
        vetoes.append(f"{GUARD_PREFIX} persona probe: card contradictions per line rose by {interval_text(probe)}")
    play = play_rise(candidate, current)
    if play is not None and exceeds(play[1], 0.0):  # an unpaired (NaN) rise is unmeasured: a veto
        vetoes.append(f"{GUARD_PREFIX} card contradictions per line in play rose by {interval_text(play)}")
    return vetoes


def play_rise(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """The paired rise of the play's contradiction share (NaN where the evaluations did not pair);
    None where there is nothing to compare (``contradiction_increase``)."""
    if contradiction_increase(candidate, current) is None:
        return None
    value = candidate.get(CARD_CONTRADICTIONS_RISE, (math.nan,) * 3)
    return float(value[0]), float(value[1]), float(value[2])


def interval_text(rise: tuple[float, float, float]) -> str:
    return f"{rise[0]:.3f} (95% CI [{rise[1]:.3f}, {rise[2]:.3f}])"


def probe_note(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Where the persona probe ran, the paired changes the contradiction guard read (a veto repeats
    the one that broke it), so a decision shows how close the candidate came."""
    probe = probe_rise(candidate, current)
    if probe is None:
        return []
    play = play_rise(candidate, current)
    in_play = "" if play is None else f"; in play {play[0]:+.3f}, 95% CI [{play[1]:.3f}, {play[2]:.3f}]"
    return [
        f"card contradictions per line: persona probe {probe[0]:+.3f}, 95% CI [{probe[1]:.3f}, {probe[2]:.3f}]{in_play}"
    ]


def contradiction_increase(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> float | None:
    """How much the share of card-contradicting lines rose (NaN, which vetoes, when only one of the
    two is measured); None when there is nothing to compare: rows evaluated before the metric
    existed, or neither bundle's conversations played a known card."""
    if CARD_CONTRADICTIONS not in candidate or CARD_CONTRADICTIONS not in current:
        return None
    ours, theirs = estimate(candidate[CARD_CONTRADICTIONS]), estimate(current[CARD_CONTRADICTIONS])
    if math.isnan(ours) and math.isnan(theirs):
        return None
    return ours - theirs
