"""Named player populations: each loads, mixes several players, and rewards what it says it does;
the ``humorous`` feature; ``--population`` on simulate, eval and loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from npcrl.agent.persona import builtin_personas
from npcrl.cli.args import player_profiles
from npcrl.cli.main import build_parser
from npcrl.paths import default_key_path
from npcrl.playlog import ConversationStart, read_log_dir
from npcrl.privacy.pseudonym import load_key, pseudonym
from npcrl.sim import Population, UnknownPopulationError, builtin_populations, load_population
from npcrl.sim.features import line_features
from npcrl.sim.populations import builtin_population_dir, shipped_profiles
from npcrl.sim.profiles import PlayerProfileError, builtin_profiles

BROM = builtin_personas()["blacksmith"]
NAMES = ("default", "questioners", "lore_seekers", "brief", "humour")
LONG_LINE = " ".join(["The forge is hot today and the iron from the hills is slow to come."] * 5)

# Per population: a line with its preferred feature and a like line without it.
PREFERENCE_LINES = {
    "questioners": ("What brings you to the forge, friend?", "The forge is hot today. Mind the sparks."),
    "lore_seekers": (
        "Captain Hedda says bandits were seen on the north road from Greyvein.",
        "Nice weather for ducks, if you ask me. Mind the sparks.",
    ),
    "brief": ("Twelve silver for a sword.", LONG_LINE),
    "humour": ("Ha ha! A sword for a mouse? Twelve silver.", "A sword for a mouse? Twelve silver."),
}


def test_every_population_loads_several_players():
    populations = builtin_populations()
    assert tuple(populations) == NAMES
    for name, population in populations.items():
        profiles = population.profiles()
        assert len(profiles) >= 2, name
        assert population.preference and all(p.description for p in profiles.values())
        assert load_population(name) == profiles
    assert load_population("default") == builtin_profiles()


def test_every_shipped_population_directory_is_registered():
    shipped = {path.name for path in builtin_population_dir().iterdir() if path.is_dir()}
    assert shipped == set(NAMES) - {"default"}


def test_players_of_different_populations_have_different_names():
    # Logs name a player by its profile, so a population's players are recognisable in them.
    names = [name for population in builtin_populations().values() for name in population.profiles()]
    assert len(names) == len(set(names))


def test_shipped_profiles_hold_every_populations_players():
    shipped = shipped_profiles()
    for population in builtin_populations().values():
        assert all(shipped[name] == profile for name, profile in population.profiles().items())
    assert len(shipped) == sum(len(population.profiles()) for population in builtin_populations().values())


def test_a_population_mixes_patience_and_rating_habits():
    for name in NAMES[1:]:
        profiles = list(load_population(name).values())
        assert len({p.max_turns for p in profiles}) >= 2, name
        assert len({p.rating_probability for p in profiles}) >= 2, name
        assert len({p.openers for p in profiles}) == len(profiles), name


@pytest.mark.parametrize("name", list(PREFERENCE_LINES))
def test_every_player_of_a_population_prefers_its_feature(name):
    population = builtin_populations()[name]
    preferred, plain = (line_features(line, BROM) for line in PREFERENCE_LINES[name])
    for feature in population.rewards:
        assert preferred[feature] > plain[feature]
    for feature in population.punishes:
        assert preferred[feature] < plain[feature]
    for profile in population.profiles().values():
        # score() is the mean of the noisy score a player reacts to.
        assert profile.score(preferred) > profile.score(plain), profile.name
        assert all(profile.weights[f] > 0 for f in population.rewards)
        assert all(profile.weights[f] < 0 for f in population.punishes)


def test_other_populations_do_not_share_the_humour_preference():
    for name in ("questioners", "lore_seekers", "brief", "default"):
        assert all("humorous" not in p.weights for p in load_population(name).values())


def write_player(directory: Path, name: str, weights: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(
        'description = "A test player."\nopeners = ["Hi, {npc}."]\nfollow_ups = ["And {topic}?"]\n'
        f"\n[weights]\n{weights}\n",
        encoding="utf-8",
    )


def test_a_profile_against_its_population_preference_is_named(tmp_path):
    write_player(tmp_path / "jokers", "laughing", "humorous = 1.0")
    write_player(tmp_path / "jokers", "grump", "humorous = -0.5")
    population = Population("jokers", "reward jokes", tmp_path / "jokers", rewards=("humorous",))
    with pytest.raises(PlayerProfileError, match=r"grump\.toml.*'jokers' rewards 'humorous'"):
        population.profiles()
    write_player(tmp_path / "short", "talker", "concise = 1.0")
    with pytest.raises(PlayerProfileError, match=r"talker\.toml.*punishes 'chatty'.*below 0"):
        Population("short", "short", tmp_path / "short", rewards=("concise",), punishes=("chatty",)).profiles()
    with pytest.raises(PlayerProfileError, match="unknown feature 'jokes'"):
        Population("bad", "bad", tmp_path, rewards=("jokes",))


def test_an_unknown_population_lists_the_known_ones():
    with pytest.raises(
        UnknownPopulationError, match="'nope'; known: default, questioners, lore_seekers, brief, humour"
    ):
        load_population("nope")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Ha ha! A sword for a mouse? Twelve silver.", 0.5),
        ("Heh. Forge ahead, friend, no pun intended.", 1.0),
        ("Why did the smith quit? He lost his temper.", 0.5),
        ("He chuckles and winks. Twelve silver.", 1.0),
        ("You jest, friend. Steel yourself for the price.", 1.0),
        ("Mara laughs at my jokes, at least.", 1.0),
        ("The forge is hot today :)", 0.5),
        ("The forge is hot today. Mind the sparks.", 0.0),
        ("Ha! Twelve silver.", 0.0),  # a bare exclamation is no joke
        ("Wolves in Ashwood are no laughing matter.", 0.0),
        ("This is no joke, friend.", 0.0),
        ("I am not kidding. Nothing funny about bandits.", 0.0),
        ("I didn't sleep a wink.", 0.0),
        ("Note:Dear sir, the price is (twelve silver)", 0.0),
        ("", 0.0),
    ],
)
def test_humorous(line, expected):
    assert line_features(line, BROM)["humorous"] == expected


# --------------------------------------------------------------------------------------------- CLI

PREFIXES = {
    "simulate": ["simulate", "--bundle", "b", "--conversations", "2", "--logs", "l"],
    "eval": ["eval", "--bundle", "b"],
    "loop": ["loop", "--bundle", "b", "--out", "o"],
}


@pytest.mark.parametrize("command", list(PREFIXES))
def test_population_flag_parses_and_picks_the_population(command, tmp_path):
    parser = build_parser()
    args = parser.parse_args([*PREFIXES[command], "--population", "brief"])
    assert args.population == "brief" and args.players is None
    assert player_profiles(args) == load_population("brief")
    neither = parser.parse_args(PREFIXES[command])
    assert neither.population is None and player_profiles(neither) == builtin_profiles()
    write_player(tmp_path, "solo", "asks_back = 1.0")
    players = parser.parse_args([*PREFIXES[command], "--players", str(tmp_path / "solo.toml")])
    assert list(player_profiles(players)) == ["solo"]


@pytest.mark.parametrize("command", list(PREFIXES))
def test_population_flag_rejects_unknown_names_and_players_with_it(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([*PREFIXES[command], "--population", "nope"])
    assert "unknown player population 'nope'; known: default, questioners, lore_seekers, brief, humour" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        parser.parse_args([*PREFIXES[command], "--population", "brief", "--players", "p.toml"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_population_help_names_every_population(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in NAMES)


def test_simulate_a_population_logs_its_players(tiny_bundle, tmp_path, capsys):
    personas = tmp_path / "personas"
    personas.mkdir()
    shutil.copy(Path(__file__).parents[2] / "npcrl/data/personas/blacksmith.toml", personas / "smith.toml")
    logs = tmp_path / "logs"
    argv = ["simulate", "--bundle", str(tiny_bundle), "--conversations", "4", "--logs", str(logs)]
    argv += ["--population", "brief", "--personas", str(personas), "--max-new-tokens", "8", "--json"]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    brief = set(load_population("brief"))
    played = {name for name, counts in summary["per_profile"].items() if counts["conversations"]}
    assert set(summary["per_profile"]) == brief and played
    key = load_key(default_key_path())
    ids = {pseudonym(f"sim-{name}", key): name for name in brief}
    starts = [r for r in read_log_dir(logs) if isinstance(r, ConversationStart)]
    assert len(starts) == 4 and {ids[s.player_id] for s in starts} == played
