"""The rows of ``npcrl populations`` and what they are written as: one ``PopulationPoint`` per
population (its round's gain, KL, perplexity, card contradictions, the features its players reward,
and what fresh players said), ``populations.json``, ``populations.md`` and ``populations.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write
from npcrl.evaluation.metric_names import CARD_CONTRADICTIONS, ENGAGEMENT, PAIRED_GAIN
from npcrl.evaluation.persona_probe import PROBE_SHARE, probe_rise
from npcrl.loop.curve import CurvePoint, curve_point, error_bars, percent_of_engagement
from npcrl.loop.decision import estimate
from npcrl.loop.round import RoundResult
from npcrl.loop.stages import Gain
from npcrl.loop.trained import training_cell

POPULATIONS_JSON, POPULATIONS_MD, POPULATIONS_PNG = "populations.json", "populations.md", "populations.png"


@dataclass(frozen=True)
class Confirmation:
    """What a population round's fresh players said (``npcrl populations --confirm-conversations``).
    The loop plays them only for a candidate that may still win (``npcrl.loop.round.worth_confirming``):
    a gain of None means they were not played."""

    rule: str
    """``npcrl.loop.settings.CONFIRM_RULES``: ``both`` or ``pooled``"""
    conversations: int
    """fresh players per bundle"""
    fresh_gain: Gain | None = None
    """the candidate's paired gain over the base on the fresh players alone (mean, low, high)"""
    fresh_percent: Gain | None = None
    pooled_gain: Gain | None = None
    """``pooled`` only: the paired gain over the evaluation and fresh players' pairs together"""
    pooled_percent: Gain | None = None

    def resolved(self, evaluation_gain: Gain) -> bool:
        """Whether the confirmation resolved the gain above zero: pooled, the pooled interval; both,
        the interval on the evaluation players (``evaluation_gain``) and the fresh players' each."""
        if self.rule == "pooled":
            return self.pooled_gain is not None and self.pooled_gain[1] > 0
        return evaluation_gain[1] > 0 and self.fresh_gain is not None and self.fresh_gain[1] > 0


@dataclass(frozen=True)
class PopulationPoint:
    """One population's round, as the table reports it."""

    population: str
    preference: str
    round: CurvePoint
    """the round's gain, KL, perplexity and promotion (``conversations`` is the round's size)"""
    card_contradictions_base: float
    card_contradictions_candidate: float
    preferred_features: dict[str, tuple[float, float]]
    """each feature the population rewards or punishes -> its mean per line (base, candidate) in
    the evaluation conversations: did the round learn what these players like?"""
    over_other: tuple[float, float, float] | None = None
    """with ``same_play_as``: this candidate's paired gain (mean, 95% CI) over the other run's
    candidate, trained on the same logs and evaluated on the same players, pooled with the fresh
    players where both runs played them (None without one)"""
    over_other_players: int = 0
    """the pairs ``over_other`` rests on: the evaluation players, plus the fresh ones where pooled"""
    confirmation: Confirmation | None = None
    """with ``confirm_conversations``: what the fresh players said (None without them)"""
    persona_probe: tuple[float, float, tuple[float, float, float]] | None = None
    """where both bundles answered the persona probe: its share for the base and the candidate, and
    the candidate's paired rise (mean, 95% CI; ``npcrl.evaluation.persona_probe``)"""

    @property
    def improved(self) -> bool:
        """The paired 95% interval of the gain lies above zero: on the evaluation players, and with a
        confirmation as its rule reads it (a confirmation not played resolves nothing)."""
        if self.confirmation is not None:
            return self.confirmation.resolved(self.round.paired_gain)
        return self.round.paired_gain[1] > 0


def population_point(
    name: str,
    preference: str,
    conversations: int,
    result: RoundResult,
    preferred: dict[str, tuple[float, float]] | None = None,
    training: dict[str, Any] | None = None,
) -> PopulationPoint:
    """``result`` (a round on ``conversations`` of the population's play) as the table's row;
    ``preferred``: the population's features per line (``preferred_features``); ``training``: how
    far it trained (``npcrl.loop.trained``)."""
    base, candidate = result.metrics["current"], result.metrics["candidate"]
    return PopulationPoint(
        population=name,
        preference=preference,
        round=curve_point(conversations, result, training),
        card_contradictions_base=estimate(base.get(CARD_CONTRADICTIONS, math.nan)),
        card_contradictions_candidate=estimate(candidate.get(CARD_CONTRADICTIONS, math.nan)),
        preferred_features=dict(preferred or {}),
        persona_probe=persona_probe_of(candidate, base),
    )


def persona_probe_of(
    candidate: Mapping[str, Any], base: Mapping[str, Any]
) -> tuple[float, float, tuple[float, float, float]] | None:
    """The probe's shares and the paired rise, where both rows hold the same probe."""
    rise = probe_rise(candidate, base)
    if rise is None:
        return None
    return estimate(base[PROBE_SHARE]), estimate(candidate[PROBE_SHARE]), rise


def confirmation_of(result: RoundResult, rule: str, conversations: int) -> Confirmation:
    """What ``result``'s fresh players gave (``npcrl.loop.round.confirm``'s rows), as a row's confirmation."""
    fresh = result.metrics.get("confirm_candidate", {}).get(PAIRED_GAIN)
    pooled = result.metrics.get("pooled_candidate", {}).get(PAIRED_GAIN)
    return Confirmation(
        rule=rule,
        conversations=conversations,
        fresh_gain=as_gain(fresh),
        fresh_percent=percent_of(fresh, result.metrics.get("confirm_current", {}).get(ENGAGEMENT)),
        pooled_gain=as_gain(pooled),
        pooled_percent=percent_of(pooled, result.metrics.get("pooled_current", {}).get(ENGAGEMENT)),
    )


def as_gain(values: Any) -> Gain | None:
    """A recorded (mean, low, high) as floats; None where there is none."""
    if values is None:
        return None
    mean, low, high = (float(v) for v in values)
    return mean, low, high


def percent_of(gain: Any, base_engagement: Any) -> Gain | None:
    """``gain`` relative to the base's mean engagement on the same players, in percent."""
    if gain is None or base_engagement is None:
        return None
    return percent_of_engagement(gain, estimate(base_engagement))


def verdict(points: Sequence[PopulationPoint]) -> str:
    """One line: did the round improve every population, resolved, and would the loop promote each?"""
    improved = [p.population for p in points if p.improved]
    promoted = [p.population for p in points if p.round.promoted]
    return (
        f"improved, resolved (paired 95% interval above 0{resolved_on(points)}): {len(improved)} of {len(points)}"
        " populations"
        f" ({', '.join(improved) or 'none'}); promoted (a win by the loop's rule and every guard held):"
        f" {len(promoted)} of {len(points)} ({', '.join(promoted) or 'none'})"
    )


def resolved_on(points: Sequence[PopulationPoint]) -> str:
    """Which players the verdict's intervals rest on, when fresh players confirmed (one rule per run)."""
    confirmation = next((p.confirmation for p in points if p.confirmation is not None), None)
    if confirmation is None:
        return ""
    if confirmation.rule == "pooled":
        return f" over the evaluation players and {confirmation.conversations} fresh ones pooled"
    return f" on the evaluation players and on {confirmation.conversations} fresh ones"


COLUMNS = (
    "population",
    "preference",
    "engagement base",
    "engagement candidate",
    "paired gain [95% CI]",
    "gain % [95% CI]",
    "its features per line, base → candidate",
    "KL/line",
    "perplexity (base)",
    "card contradictions / line (base)",
    "promoted",
    "training iterations",
    "train+export s",
)

PROBE_COLUMN = "persona probe: contradictions / line (base), paired rise [95% CI]"
"""where the loop probed both bundles (``--persona-probe-lines``): the contradiction guard's measurement"""

CONFIRM_COLUMNS = ("fresh players: paired gain [95% CI] (%)", "pooled: paired gain [95% CI] (%)")
"""with ``confirm_conversations``: the candidate's gain on the fresh players, and (rule ``pooled``)
on the evaluation and fresh players' pairs together"""


def probe_cell(probe: tuple[float, float, tuple[float, float, float]] | None) -> str:
    if probe is None:
        return "-"
    base, candidate, (rise, low, high) = probe
    return f"{candidate:.3f} ({base:.3f}), {rise:+.3f} [{low:+.3f}, {high:+.3f}]"


def write_populations(out: Path, points: Sequence[PopulationPoint], other: Path | None = None) -> None:
    """``populations.json``, ``populations.md`` and (with matplotlib) ``populations.png``; with
    ``other`` (the run whose play this one took) a column of each candidate's gain over other's."""
    rows = [{**asdict(p), "improved": p.improved} for p in points]
    atomic_write(out / POPULATIONS_JSON, json.dumps(rows, indent=2) + "\n")
    confirmed = any(p.confirmation is not None for p in points)
    probed = any(p.persona_probe is not None for p in points)
    columns = [
        *COLUMNS,
        *([PROBE_COLUMN] if probed else []),
        *(CONFIRM_COLUMNS if confirmed else []),
        *(["paired gain over the other candidate [95% CI] (players)"] if other else []),
    ]
    lines = ["# npcrl populations", "", verdict(points), ""]
    if other is not None:
        lines += [
            f"Each candidate against the one {other} trained on the same logs, on the same players"
            " (its evaluation players, and the fresh ones where both runs played them).",
            "",
        ]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in points:
        r = p.round
        pct = r.gain_percent
        cells = [
            p.population,
            p.preference,
            f"{r.engagement_base:.3f}",
            f"{r.engagement_candidate:.3f}",
            gain_cell(r.paired_gain),
            f"{pct[0]:+.1f}% [{pct[1]:+.1f}, {pct[2]:+.1f}]",
            features_cell(p.preferred_features),
            f"{r.kl_per_line:.2f}",
            f"{r.perplexity:.2f} ({r.base_perplexity:.2f})",
            f"{p.card_contradictions_candidate:.3f} ({p.card_contradictions_base:.3f})",
            str(r.promoted),
            training_cell(p.round.training),
            f"{r.seconds.get('train_and_export', math.nan):.0f}",
            *([probe_cell(p.persona_probe)] if probed else []),
            *(confirmation_cells(p.confirmation) if confirmed else []),
            *([over_other_cell(p)] if other else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {p.population}: " + "; ".join(p.round.reasons) for p in points)]
    # A population mixes profiles; one gain over all its players can hide a loss on some of them.
    lines += [
        f"- {p.population}, paired gain per kind of player: {p.round.by_profile}" for p in points if p.round.by_profile
    ]
    atomic_write(out / POPULATIONS_MD, "\n".join(lines) + "\n")
    plot_populations(out / POPULATIONS_PNG, points)


def confirmation_cells(confirmation: Confirmation | None) -> list[str]:
    """The cells under ``CONFIRM_COLUMNS``: the gain on the fresh players, and pooled, each with
    its percent; ``not played`` where the loop did not play them (a candidate that could not win)."""
    if confirmation is None:
        return ["-", "-"]
    fresh = percent_gain_cell(confirmation.fresh_gain, confirmation.fresh_percent)
    if confirmation.rule != "pooled":
        return [fresh, "-"]
    return [fresh, percent_gain_cell(confirmation.pooled_gain, confirmation.pooled_percent)]


def percent_gain_cell(gain: Gain | None, percent: Gain | None) -> str:
    """e.g. ``+0.210 [-0.150, 0.560] (+7.5% [-5.4, +20.0])``; ``not played`` without a gain."""
    if gain is None:
        return "not played"
    if percent is None:
        return gain_cell(gain)
    return f"{gain_cell(gain)} ({percent[0]:+.1f}% [{percent[1]:+.1f}, {percent[2]:+.1f}])"


def gain_cell(gain: tuple[float, float, float] | None) -> str:
    """e.g. ``+0.210 [-0.150, 0.560]``; ``not evaluated yet`` without one."""
    return "not evaluated yet" if gain is None else f"{gain[0]:+.3f} [{gain[1]:.3f}, {gain[2]:.3f}]"


def over_other_cell(point: PopulationPoint) -> str:
    """e.g. ``+0.210 [-0.150, 0.560] (192)``; ``not evaluated yet`` while the other run's candidate is not."""
    if point.over_other is None:
        return gain_cell(None)
    return f"{gain_cell(point.over_other)} ({point.over_other_players})"


def features_cell(features: Mapping[str, tuple[float, float]]) -> str:
    """e.g. ``asks_back 0.41 → 0.61``; several joined by commas."""
    return ", ".join(f"{name} {base:.2f} → {candidate:.2f}" for name, (base, candidate) in features.items()) or "-"


def plot_populations(path: Path, points: Sequence[PopulationPoint]) -> bool:
    """Each population's gain in percent with its paired interval; False (and no file) without
    matplotlib, which only the ``train`` extra installs."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # headless: made on servers and in tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(points) + 3, 4))
    where = list(range(len(points)))
    mean, below, above = error_bars([p.round.gain_percent for p in points])
    colours = ["tab:green" if p.improved else "tab:grey" for p in points]
    ax.bar(where, mean, color=colours, alpha=0.6)
    ax.errorbar(where, mean, yerr=[below, above], fmt="none", ecolor="black", capsize=5)
    plot_pooled(ax, points)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axhline(30.0, color="tab:green", linestyle="--", linewidth=0.8, label="+30%")
    ax.set_xlim(-0.8, len(points) - 0.2)  # one population: a bar, not the whole panel
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks(where, [p.population for p in points])
    ax.set(ylabel="engagement gain over the base (%, paired 95% CI)", title="one round per population")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_pooled(ax: Any, points: Sequence[PopulationPoint]) -> None:
    """Beside each bar (the evaluation players), the gain over the evaluation and fresh players
    pooled, where the confirmation played them."""
    pooled = [
        (k + 0.25, p.confirmation.pooled_percent)
        for k, p in enumerate(points)
        if p.confirmation is not None and p.confirmation.pooled_percent is not None
    ]
    if not pooled:
        return
    where = [x for x, _ in pooled]
    mean, below, above = error_bars([gain for _, gain in pooled])
    ax.errorbar(
        where, mean, yerr=[below, above], fmt="D", color="tab:blue", capsize=4, label="evaluation + fresh players"
    )
