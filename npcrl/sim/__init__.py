"""Simulated players: headless conversations that leave real play logs (no torch, no pygame).

``features`` reads what a player notices in an NPC line, ``profiles`` turns that into engagement
(TOML player profiles; four ship in ``npcrl/data/players``), ``populations`` names sets of profiles
that share one preference (``npcrl/data/populations``), ``simulate`` plays conversations
through ``NpcAgent`` (``ordered``: several at once, logged in order); ``npcrl.cli.sim`` adds
``npcrl simulate``.
"""

from __future__ import annotations

from npcrl.sim.features import FEATURES, line_features
from npcrl.sim.populations import Population, UnknownPopulationError, builtin_populations, load_population
from npcrl.sim.profiles import (
    PlayerProfile,
    PlayerProfileError,
    Reaction,
    builtin_profiles,
    load_profile,
    load_profiles,
)
from npcrl.sim.simulate import SimulatedConversation, SimulatedTurn, SimulationSummary, simulate

__all__ = [
    "FEATURES",
    "PlayerProfile",
    "PlayerProfileError",
    "Population",
    "Reaction",
    "SimulatedConversation",
    "SimulatedTurn",
    "SimulationSummary",
    "UnknownPopulationError",
    "builtin_populations",
    "builtin_profiles",
    "line_features",
    "load_population",
    "load_profile",
    "load_profiles",
    "simulate",
]
