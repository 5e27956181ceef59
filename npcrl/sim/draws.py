"""What a seeded simulation draws for its conversation k, and the names it logs.

Everything about conversation k of a run (its sampler seed, its player profile, the player's
draws) derives from the run's seed and k alone, so every bundle and every concurrency meets the
same players: that is what makes two evaluations pairable. The log names conversation k by an id
that ends in k, and its player by a keyed pseudonym of the profile's name.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable

from npcrl.privacy.pseudonym import pseudonym

PLAYER_ID_PREFIX = "sim-"
"""a simulated conversation logs its player as this prefix + the profile's name"""

_SEED_MASK = (1 << 63) - 1
_SIMULATED_ID = re.compile(r"sim-(?P<bundle>.*)-s(?P<seed>-?[0-9]+)-(?P<index>[0-9]{6,})")


def derive_seed(seed: int, index: int, purpose: str) -> int:
    """A seed for one purpose of conversation ``index``, stable across runs and platforms."""
    digest = hashlib.sha256(f"npcrl-sim/{seed}/{index}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


def simulated_conversation_id(bundle_id: str, seed: int, index: int) -> str:
    """The log id of conversation ``index`` of a simulation: the same for the same bundle and seed,
    so a rerun writes the same logs (and the trainer's holdout split, which ranks conversation ids,
    picks the same conversations); different for other bundles or seeds, so their logs can be pooled."""
    return f"sim-{bundle_id[:16]}-s{seed}-{index:06d}"


def simulated_conversation_seat(conversation_id: str) -> tuple[int, int] | None:
    """(seed, index) of a ``simulated_conversation_id``; None for any other id (real play)."""
    match = _SIMULATED_ID.fullmatch(conversation_id)
    return None if match is None else (int(match["seed"]), int(match["index"]))


def simulated_conversation_bundle(conversation_id: str) -> str | None:
    """The bundle-id prefix a ``simulated_conversation_id`` was played with; None for any other id."""
    match = _SIMULATED_ID.fullmatch(conversation_id)
    return None if match is None else match["bundle"]


def drawn_profile(seed: int, index: int, profiles: int) -> int:
    """Which of ``profiles`` player profiles (by position in the run's list) plays conversation
    ``index`` of a run seeded ``seed``."""
    return random.Random(derive_seed(seed, index, "profile")).randrange(profiles)


def simulated_players(profiles: Iterable[str], key: bytes) -> dict[str, str]:
    """The logged player id of each profile's simulated players -> the profile's name. A writer
    logs a keyed pseudonym of ``PLAYER_ID_PREFIX + name``; ``key`` must be the one it used."""
    return {pseudonym(f"{PLAYER_ID_PREFIX}{name}", key): name for name in profiles}
