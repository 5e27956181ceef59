"""Named populations of simulated players: several profiles that share one preference.

A population is a directory of player profiles (``npcrl/data/populations/<name>/*.toml``, the
format of ``npcrl.sim.profiles``) whose players differ in patience, rating habits and lines but
all reward the same thing, so that one training setup can be tried on players who want different
things. The shipped ones:

- ``default``: the shipped profiles (``npcrl/data/players``), what runs when no players are named;
- ``questioners``: reward an NPC who asks them things back (``asks_back``);
- ``lore_seekers``: reward the world's names, places and history (``mentions_lore``);
- ``brief``: reward short lines and punish long ones (``concise``, against ``chatty``);
- ``humour``: reward jokes, puns and laughter (``humorous``).

A population states its preference as features: every one of its profiles must weigh each of
``rewards`` above 0 and each of ``punishes`` below 0; loading it checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from npcrl.sim.features import FEATURES
from npcrl.sim.profiles import PlayerProfile, PlayerProfileError, builtin_profile_dir, load_profiles


class UnknownPopulationError(PlayerProfileError):
    """No population has this name; the message lists the known ones."""


@dataclass(frozen=True)
class Population:
    """Player profiles that share one preference."""

    name: str
    preference: str
    """one line for people: what every player of the population rewards"""
    directory: Path
    """the population's profiles, every ``*.toml`` in it"""
    rewards: tuple[str, ...] = ()
    """features every profile weighs above 0"""
    punishes: tuple[str, ...] = ()
    """features every profile weighs below 0"""

    def __post_init__(self) -> None:
        for feature in (*self.rewards, *self.punishes):
            if feature not in FEATURES:
                raise PlayerProfileError(
                    f"population {self.name!r}: unknown feature {feature!r}; features: {', '.join(FEATURES)}"
                )

    def profiles(self) -> dict[str, PlayerProfile]:
        """The population's profiles by name; a profile that breaks its preference is an error naming the file."""
        profiles = load_profiles(self.directory)
        for name, profile in profiles.items():
            for feature in self.rewards:
                if profile.weights.get(feature, 0.0) <= 0:
                    raise PlayerProfileError(
                        f"{self.directory / name}.toml: population {self.name!r} rewards {feature!r},"
                        f" so weights.{feature} must be above 0"
                    )
            for feature in self.punishes:
                if profile.weights.get(feature, 0.0) >= 0:
                    raise PlayerProfileError(
                        f"{self.directory / name}.toml: population {self.name!r} punishes {feature!r},"
                        f" so weights.{feature} must be below 0"
                    )
        return profiles


def builtin_population_dir() -> Path:
    """Where the shipped populations (all but ``default``) keep their profiles, one directory each."""
    return Path(str(files("npcrl").joinpath("data/populations")))


def builtin_populations() -> dict[str, Population]:
    """The shipped populations by name (see the module docstring)."""
    root = builtin_population_dir()
    populations = (
        Population(
            "default",
            "the shipped mix of curious, impatient, lore-loving and quest-seeking players",
            builtin_profile_dir(),
        ),
        Population(
            "questioners", "reward an NPC who asks them things back", root / "questioners", rewards=("asks_back",)
        ),
        Population(
            "lore_seekers",
            "reward names, places and history of the world",
            root / "lore_seekers",
            rewards=("mentions_lore",),
        ),
        Population(
            "brief", "reward short lines, punish long ones", root / "brief", rewards=("concise",), punishes=("chatty",)
        ),
        Population("humour", "reward jokes, puns and laughter", root / "humour", rewards=("humorous",)),
    )
    return {population.name: population for population in populations}


def shipped_profiles() -> dict[str, PlayerProfile]:
    """Every shipped population's profiles by name (the default population's included): the
    profiles whose simulated players a machine's key can name back from the logs. No two shipped
    populations share a profile name."""
    return {
        name: profile
        for population in builtin_populations().values()
        for name, profile in population.profiles().items()
    }


def load_population(name: str) -> dict[str, PlayerProfile]:
    """The profiles of the shipped population ``name``; an unknown name is an error listing the known ones."""
    populations = builtin_populations()
    if name not in populations:
        raise UnknownPopulationError(f"unknown player population {name!r}; known: {', '.join(populations)}")
    return populations[name].profiles()
