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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from npcrl.durable import atomic_write
from npcrl.errors import LoopError
from npcrl.evaluation.metric_names import CARD_CONTRADICTIONS
from npcrl.loop.adopt import check_play_source
from npcrl.loop.curve import CurvePoint, curve_point
from npcrl.loop.decision import estimate
from npcrl.loop.round import RoundResult
from npcrl.loop.run import run_loop
from npcrl.loop.settings import LoopSettings
from npcrl.loop.stages import paired_gain_or_nan, stage_logs
from npcrl.loop.state import LOOP_FILE, RoundStages, check_loop_out, exclusive, write_loop_record
from npcrl.loop.trained import trained_how_far, training_cell

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
    over_other: tuple[float, float, float] | None = None
    """with ``same_play_as``: this candidate's paired gain (mean, 95% CI) over the other run's
    candidate, trained on the same logs and evaluated on the same players (None without one)"""

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
    same_play_as: str | Path | None = None,
) -> list[PopulationPoint]:
    """One loop round from ``base`` per name in ``populations``, into ``out/<name>/``; the rows.

    ``same_play_as``: an earlier ``run_populations`` output with the same play settings (any training
    config): each population's round takes that run's simulated play and base evaluation
    (``npcrl.loop.adopt``) and its row says how this candidate does against that run's candidate on
    the same players (``over_other``): how training setups are compared."""
    from npcrl.agent.persona import builtin_personas
    from npcrl.sim.populations import load_population

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
    other = None if same_play_as is None else Path(same_play_as)
    points = []
    with exclusive(out):
        # A resume may name other populations: each one's own loop.json guards its settings.
        check_loop_out(out, resume, record, may_change=("populations",))
        if other is not None:  # every population's source, before this run claims anything
            check_play_sources(settings, out, players, other)
        write_loop_record(out, record)
        for name in names:
            points.append(population_row(settings, out, name, players[name], other))
            write_populations(out, points, other)  # after each population: a long run shows what it has
    return points


def check_play_sources(settings: LoopSettings, out: Path, players: Mapping[str, Any], other: Path) -> None:
    """Refuse ``other`` unless each population not yet begun in ``out`` can take its play from it."""
    for name, population_players in players.items():
        if not (out / name / "round-1").exists():
            check_play_source(other / name, replace(settings, players=population_players).record())


def population_row(
    settings: LoopSettings, out: Path, name: str, players: Sequence[Any], other: Path | None
) -> PopulationPoint:
    """Population ``name``'s round (played, or read back) and what it measured, as the table's row."""
    from npcrl.sim.populations import builtin_populations

    result = play_population(settings, out / name, players, None if other is None else other / name)
    population = builtin_populations()[name]
    cards = {persona.id: persona for persona in settings.personas}
    features = preferred_features(out / name / "round-1", (*population.rewards, *population.punishes), cards)
    training = trained_how_far(out / name / "round-1" / "train")
    point = population_point(name, population.preference, settings.conversations, result, features, training)
    if other is not None:
        point = replace(point, over_other=gain_over_other(settings, out / name, other / name))
    return point


def play_population(
    settings: LoopSettings, folder: Path, players: Sequence[Any], same_play_as: Path | None = None
) -> RoundResult:
    """One round of ``settings`` played by ``players``, as the loop run ``folder`` (read back when
    finished); ``same_play_as``: the loop run whose round-1 play it takes."""
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
        same_play_as=same_play_as,
    )
    return results[0]


def gain_over_other(settings: LoopSettings, folder: Path, other: Path) -> tuple[float, float, float] | None:
    """The paired gain of loop run ``folder``'s round-1 candidate over loop run ``other``'s, both
    evaluated on the same players and seeds; None while ``other``'s candidate is not evaluated."""
    from npcrl.loop.run import reward_spec_of

    if not RoundStages(other / "round-1").done("evaluate_candidate"):
        return None
    logs = [stage_logs(run / "round-1", "evaluate_candidate") for run in (folder, other)]
    spec = reward_spec_of(settings.train_config)
    return paired_gain_or_nan(logs[0], logs[1], spec, settings.eval_settings().seed)


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


def write_populations(out: Path, points: Sequence[PopulationPoint], other: Path | None = None) -> None:
    """``populations.json``, ``populations.md`` and (with matplotlib) ``populations.png``; with
    ``other`` (the run whose play this one took) a column of each candidate's gain over other's."""
    rows = [{**asdict(p), "improved": p.improved} for p in points]
    atomic_write(out / POPULATIONS_JSON, json.dumps(rows, indent=2) + "\n")
    columns = [*COLUMNS, *(["paired gain over the other candidate [95% CI]"] if other else [])]
    lines = ["# npcrl populations", "", verdict(points), ""]
    if other is not None:
        lines += [f"Each candidate against the one {other} trained on the same logs, on the same players.", ""]
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
            *([gain_cell(p.over_other)] if other else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {p.population}: " + "; ".join(p.round.reasons) for p in points)]
    atomic_write(out / POPULATIONS_MD, "\n".join(lines) + "\n")
    plot_populations(out / POPULATIONS_PNG, points)


def gain_cell(gain: tuple[float, float, float] | None) -> str:
    """e.g. ``+0.210 [-0.150, 0.560]``; ``not evaluated yet`` without one."""
    return "not evaluated yet" if gain is None else f"{gain[0]:+.3f} [{gain[1]:.3f}, {gain[2]:.3f}]"


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
