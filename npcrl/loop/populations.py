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

With ``confirm_conversations`` each round's decision also hears fresh players, as ``npcrl loop
--confirm-conversations`` does (``confirm_rule`` ``both`` or ``pooled``), and a population counts as
improved only where that confirmation resolved the gain (``Confirmation``); with ``same_play_as`` the
base's fresh players are taken from that run too when it played the same number of them.

Each population's run is recorded stage by stage like any loop run: ``resume`` goes on from the
last finished stage, and a population whose round finished is read back, not played again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from npcrl.errors import LoopError
from npcrl.loop.adopt import check_play_source, confirmation_adoptable
from npcrl.loop.decision import Guards
from npcrl.loop.populations_table import PopulationPoint, confirmation_of, population_point, write_populations
from npcrl.loop.round import RoundResult
from npcrl.loop.run import run_loop
from npcrl.loop.settings import LoopSettings
from npcrl.loop.stages import Gain, pooled_gain_or_nan, stage_logs
from npcrl.loop.state import LOOP_FILE, RoundStages, check_loop_out, exclusive, write_loop_record
from npcrl.loop.trained import trained_how_far

DEFAULT_POPULATIONS = ("questioners", "lore_seekers", "brief", "humour")
"""the shipped populations with one preference each (``default`` is the shipped mix, the curve's players)"""


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
    confirm_conversations: int = 0,
    confirm_rule: str = "both",
    guards: Guards | None = None,
    resume: bool = False,
    same_play_as: str | Path | None = None,
) -> list[PopulationPoint]:
    """One loop round from ``base`` per name in ``populations``, into ``out/<name>/``; the rows.

    ``same_play_as``: an earlier ``run_populations`` output with the same play settings (any training
    config): each population's round takes that run's simulated play and base evaluation
    (``npcrl.loop.adopt``) and its row says how this candidate does against that run's candidate on
    the same players (``over_other``; pooled with the fresh players where both runs played them):
    how training setups are compared.

    ``confirm_conversations`` > 0: each round's decision also hears that many fresh players, as
    ``confirm_rule`` says (``npcrl.loop.run.run_loop``), and each row says what they gave."""
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
        confirm_conversations=confirm_conversations,
        confirm_rule=confirm_rule,
        guards=guards or Guards(),
    )
    settings.check()
    return play_populations(settings, Path(out), players, resume, None if same_play_as is None else Path(same_play_as))


def play_populations(
    settings: LoopSettings, out: Path, players: Mapping[str, Any], resume: bool, other: Path | None
) -> list[PopulationPoint]:
    """One round of ``settings`` per population in ``players`` (name -> its players), in order; the rows."""
    names = list(players)
    record = {**settings.record(), "players": None, "populations": names}
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
    if settings.confirm_conversations > 0:
        point = replace(
            point, confirmation=confirmation_of(result, settings.confirm_rule, settings.confirm_conversations)
        )
    over_other = None if other is None else gain_over_other(settings, out / name, other / name)
    if over_other is not None:
        point = replace(point, over_other=over_other[0], over_other_players=over_other[1])
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
        confirm_conversations=settings.confirm_conversations,
        confirm_rule=settings.confirm_rule,
        guards=settings.guards,
        resume=(folder / LOOP_FILE).is_file(),
        same_play_as=same_play_as,
    )
    return results[0]


def gain_over_other(settings: LoopSettings, folder: Path, other: Path) -> tuple[Gain, int] | None:
    """The paired gain of loop run ``folder``'s round-1 candidate over loop run ``other``'s, and on
    how many players: both candidates' evaluation players, pooled with their fresh players where both
    runs played those (the same number, so the same players: ``fresh_players_shared``). None while
    ``other``'s candidate is not evaluated."""
    from npcrl.loop.run import reward_spec_of

    if not RoundStages(other / "round-1").done("evaluate_candidate"):
        return None
    stages = ["evaluate_candidate"]
    if fresh_players_shared(settings, folder, other):
        stages.append("confirm_candidate")
    pairs = [(stage_logs(folder / "round-1", stage), stage_logs(other / "round-1", stage)) for stage in stages]
    _, _, gain, players = pooled_gain_or_nan(
        pairs, reward_spec_of(settings.train_config), settings.eval_settings().seed
    )
    return gain, players


def fresh_players_shared(settings: LoopSettings, folder: Path, other: Path) -> bool:
    """Whether both loop runs' candidates played round 1's fresh players, and the same ones: the
    runs share the play settings (``same_play_as`` checked them), so the same number means the same
    seeds and players (``adopt.confirmation_adoptable``, which the base's fresh play was taken by)."""
    same_players = confirmation_adoptable(other / "round-1", settings.confirm_conversations)
    return same_players and all(RoundStages(run / "round-1").done("confirm_candidate") for run in (folder, other))


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
