"""``npcrl populations``: one loop round per population of simulated players, with one training setup.

A trainer worth relying on finds what *these* players like, whatever it is. So the same base, the
same training config and the same seeds play one ``npcrl loop`` round (``npcrl.loop.run``) against
each named population (``npcrl.sim.populations``): the base plays the population's players, the
trainer learns from those logs, and the candidate and the base play the population's evaluation
players. Nothing but the players differs between populations.

    OUT/loop.json               the settings (with ``populations``); a resume must match them
    OUT/<population>/           that population's one-round loop run (its own loop.json, round-1/, loop.md)
    OUT/populations.json, .md   one row per population: gain over the base with its paired 95%
    OUT/populations.png         interval, the features the population rewards (and punishes) per
                                line said to its evaluation players, KL per line, perplexity, card
                                contradictions, promoted

Each population's run is recorded stage by stage like any loop run: ``resume`` goes on from the
last finished stage, and a population whose round finished is read back, not played again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write
from npcrl.errors import LoopError
from npcrl.evaluation.metric_names import CARD_CONTRADICTIONS
from npcrl.loop.curve import CurvePoint, curve_point
from npcrl.loop.decision import estimate
from npcrl.loop.round import RoundResult
from npcrl.loop.run import run_loop
from npcrl.loop.settings import LoopSettings
from npcrl.loop.stages import stage_logs
from npcrl.loop.state import LOOP_FILE, check_loop_out, exclusive, write_loop_record

DEFAULT_POPULATIONS = ("questioners", "lore_seekers", "brief", "humour")
"""the shipped populations with one preference each (``default`` is the shipped mix, the curve's players)"""
POPULATIONS_JSON, POPULATIONS_MD, POPULATIONS_PNG = "populations.json", "populations.md", "populations.png"


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

    @property
    def improved(self) -> bool:
        """The paired 95% interval of the gain lies above zero."""
        return self.round.paired_gain[1] > 0


def run_populations(  # the keywords of run_loop, but populations instead of players and rounds
    base: str | Path,
    out: str | Path,
    populations: Sequence[str],
    conversations: int,
    eval_conversations: int,
    train_config: Any,
    seed: int = 0,
    personas: Sequence[Any] | None = None,
    max_new_tokens: int | None = None,
    system_prompts: dict[str, str] | None = None,
    concurrency: int = 1,
    promote_when: str = "significant",
    resume: bool = False,
) -> list[PopulationPoint]:
    """One loop round from ``base`` per name in ``populations``, into ``out/<name>/``; the rows."""
    from npcrl.agent.persona import builtin_personas
    from npcrl.sim.populations import builtin_populations, load_population

    names = check_names(populations)
    players = {name: list(load_population(name).values()) for name in names}  # an unknown name fails here
    settings = LoopSettings(
        base=Path(base),
        rounds=1,
        conversations=conversations,
        eval_conversations=eval_conversations,
        train_config=train_config,
        seed=seed,
        players=players[names[0]],
        personas=list(personas or builtin_personas().values()),
        max_new_tokens=max_new_tokens,
        system_prompts=system_prompts,
        concurrency=concurrency,
        promote_when=promote_when,
    )
    settings.check()
    out = Path(out)
    record = {**settings.record(), "players": None, "populations": names}
    points = []
    with exclusive(out):
        # A resume may name other populations: each one's own loop.json guards its settings.
        check_loop_out(out, resume, record, may_change=("populations",))
        write_loop_record(out, record)
        cards = {persona.id: persona for persona in settings.personas}
        for name in names:
            result = play_population(settings, out / name, players[name])
            population = builtin_populations()[name]
            features = preferred_features(out / name / "round-1", (*population.rewards, *population.punishes), cards)
            points.append(population_point(name, population.preference, conversations, result, features))
            write_populations(out, points)  # after each population: a long run shows what it has
    return points


def play_population(settings: LoopSettings, folder: Path, players: Sequence[Any]) -> RoundResult:
    """One round of ``settings`` played by ``players``, as the loop run ``folder`` (read back when finished)."""
    print(f"[npcrl populations] {folder.name}: one round in {folder}", flush=True)
    results = run_loop(
        settings.base,
        folder,
        rounds=1,
        conversations=settings.conversations,
        eval_conversations=settings.eval_conversations,
        train_config=settings.train_config,
        seed=settings.seed,
        players=players,
        personas=settings.personas,
        max_new_tokens=settings.max_new_tokens,
        system_prompts=settings.system_prompts,
        concurrency=settings.concurrency,
        promote_when=settings.promote_when,
        resume=(folder / LOOP_FILE).is_file(),
    )
    return results[0]


def check_names(populations: Sequence[str]) -> list[str]:
    """The names in order, each once; at least one."""
    names = list(dict.fromkeys(str(name) for name in populations))
    if not names:
        raise LoopError("name at least one player population")
    return names


def preferred_features(
    round_dir: Path, features: Sequence[str], cards: Mapping[str, Any]
) -> dict[str, tuple[float, float]]:
    """Each of ``features`` -> its mean per line in the round's evaluation logs (base, candidate)."""
    from npcrl.sim.logged_features import logged_line_features

    base = logged_line_features(stage_logs(round_dir, "evaluate_current"), cards).means
    candidate = logged_line_features(stage_logs(round_dir, "evaluate_candidate"), cards).means
    return {name: (base[name], candidate[name]) for name in features}


def population_point(
    name: str,
    preference: str,
    conversations: int,
    result: RoundResult,
    preferred: dict[str, tuple[float, float]] | None = None,
) -> PopulationPoint:
    """``result`` (a round on ``conversations`` of the population's play) as the table's row;
    ``preferred``: the population's features per line (``preferred_features``)."""
    base, candidate = result.metrics["current"], result.metrics["candidate"]
    return PopulationPoint(
        population=name,
        preference=preference,
        round=curve_point(conversations, result),
        card_contradictions_base=estimate(base.get(CARD_CONTRADICTIONS, math.nan)),
        card_contradictions_candidate=estimate(candidate.get(CARD_CONTRADICTIONS, math.nan)),
        preferred_features=dict(preferred or {}),
    )


def verdict(points: Sequence[PopulationPoint]) -> str:
    """One line: did the round improve every population, resolved, and would the loop promote each?"""
    improved = [p.population for p in points if p.improved]
    promoted = [p.population for p in points if p.round.promoted]
    return (
        f"improved, resolved (paired 95% interval above 0): {len(improved)} of {len(points)} populations"
        f" ({', '.join(improved) or 'none'}); promoted (a win by the loop's rule and every guard held):"
        f" {len(promoted)} of {len(points)} ({', '.join(promoted) or 'none'})"
    )


def write_populations(out: Path, points: Sequence[PopulationPoint]) -> None:
    """``populations.json``, ``populations.md`` and (with matplotlib) ``populations.png``."""
    rows = [{**asdict(p), "improved": p.improved} for p in points]
    atomic_write(out / POPULATIONS_JSON, json.dumps(rows, indent=2) + "\n")
    lines = [
        "# npcrl populations",
        "",
        verdict(points),
        "",
        "| population | preference | engagement base | engagement candidate | paired gain [95% CI] "
        "| gain % [95% CI] | its features per line, base → candidate | KL/line | perplexity (base) "
        "| card contradictions / line (base) | promoted | train+export s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        r = p.round
        gain, pct = r.paired_gain, r.gain_percent
        lines.append(
            f"| {p.population} | {p.preference} | {r.engagement_base:.3f} | {r.engagement_candidate:.3f} "
            f"| {gain[0]:+.3f} [{gain[1]:.3f}, {gain[2]:.3f}] | {pct[0]:+.1f}% [{pct[1]:+.1f}, {pct[2]:+.1f}] "
            f"| {features_cell(p.preferred_features)} | {r.kl_per_line:.2f} | {r.perplexity:.2f} ({r.base_perplexity:.2f}) "
            f"| {p.card_contradictions_candidate:.3f} ({p.card_contradictions_base:.3f}) | {r.promoted} "
            f"| {r.seconds.get('train_and_export', math.nan):.0f} |"
        )
    lines += ["", *(f"- {p.population}: " + "; ".join(p.round.reasons) for p in points)]
    atomic_write(out / POPULATIONS_MD, "\n".join(lines) + "\n")
    plot_populations(out / POPULATIONS_PNG, points)


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
    mean = [p.round.gain_percent[0] for p in points]
    below = [p.round.gain_percent[0] - p.round.gain_percent[1] for p in points]
    above = [p.round.gain_percent[2] - p.round.gain_percent[0] for p in points]
    colours = ["tab:green" if p.improved else "tab:grey" for p in points]
    ax.bar(where, mean, color=colours, alpha=0.6)
    ax.errorbar(where, mean, yerr=[below, above], fmt="none", ecolor="black", capsize=5)
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
