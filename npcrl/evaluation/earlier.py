"""An earlier evaluation's play logs as the side a new bundle is compared with.

Evaluation plays conversation k with the same player, persona and seeds for every bundle, so a
base evaluated once can be paired with any number of candidates (``npcrl curve`` does this for its
sizes; ``npcrl eval --against-logs`` lets a user do it). The pairing is only sound when the logs
are one evaluation of exactly the conversations the new one plays: ``check_evaluation_logs``
refuses anything else, naming the directory and what differs. The players are checked too where
the logs can show them: a simulated player is logged as a keyed pseudonym of its profile's name
(``npcrl.sim.draws``), so under this machine's key the logs name the profile of each conversation,
which must be the one this evaluation draws for it. Logs written under another key name no profile
this machine knows; they are paired unchecked, and the caller says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from npcrl.agent.persona import Persona
from npcrl.errors import NpcrlError
from npcrl.playlog import ConversationStart, read_log_dir
from npcrl.sim.draws import (
    drawn_profile,
    simulated_conversation_bundle,
    simulated_conversation_seat,
    simulated_players,
)


def check_evaluation_logs(
    log_dir: Path,
    seed: int,
    conversations: int,
    personas: Sequence[Persona],
    max_new_tokens: int,
    profiles: Sequence[str] = (),
) -> tuple[str, bool]:
    """Refuse ``log_dir`` unless it holds one simulated evaluation of conversations 0..n-1 under
    ``seed``, persona k mod len(personas) in conversation k, lines capped at ``max_new_tokens``,
    and (where this machine's key shows them) conversation k played by the player of ``profiles``
    drawn for it. Returns the bundle id (its first 16 hex digits) the logs were played with, and
    whether the players were checked."""
    starts = [r for r in read_log_dir(log_dir) if isinstance(r, ConversationStart)]
    if not starts:
        raise NpcrlError(f"{log_dir}: no conversations to compare with")
    bundles, indices = set(), []
    for start in starts:
        seat = simulated_conversation_seat(start.conversation_id)
        if seat is None:
            raise NpcrlError(f"{log_dir}: {start.conversation_id!r} is not a simulated conversation")
        if seat[0] != seed:
            raise NpcrlError(f"{log_dir}: played with seed {seat[0]}, this evaluation uses --seed {seed}")
        bundles.add(simulated_conversation_bundle(start.conversation_id) or "")  # a seat: never None
        index = seat[1]
        indices.append(index)
        expected = personas[index % len(personas)]
        if start.persona_hash != expected.persona_hash:
            raise NpcrlError(
                f"{log_dir}: conversation {index} played another persona card than {expected.name!r}"
                " (evaluate with the same --personas)"
            )
        if start.sampler.get("max_new_tokens") != max_new_tokens:
            raise NpcrlError(
                f"{log_dir}: lines capped at {start.sampler.get('max_new_tokens')} tokens,"
                f" this evaluation caps them at {max_new_tokens} (--max-new-tokens)"
            )
    if len(bundles) != 1:
        raise NpcrlError(f"{log_dir}: holds the evaluations of {len(bundles)} bundles; give one bundle's logs")
    if sorted(indices) != list(range(conversations)):
        raise NpcrlError(
            f"{log_dir}: holds {len(indices)} conversation(s), not conversations 0..{conversations - 1}"
            " (evaluate with the same --conversations)"
        )
    played = list(zip(indices, starts, strict=True))
    return bundles.pop(), bool(profiles) and _players_checked(log_dir, played, seed, profiles)


def _players_checked(
    log_dir: Path, played: Sequence[tuple[int, ConversationStart]], seed: int, profiles: Sequence[str]
) -> bool:
    """Whether this machine's key shows the logs' players (False: written under another key, or by
    profiles neither given nor shipped); refuses a conversation played by another profile than the
    one drawn for it."""
    from npcrl.paths import default_key_path
    from npcrl.privacy.pseudonym import load_key
    from npcrl.sim.populations import shipped_profiles

    path = default_key_path()
    if not path.is_file():
        return False
    shipped = set(shipped_profiles())
    known = simulated_players([*profiles, *sorted(shipped - set(profiles))], load_key(path))
    if not any(start.player_id in known for _, start in played):
        return False
    for index, start in played:
        expected = profiles[drawn_profile(seed, index, len(profiles))]
        profile = known.get(start.player_id, "unknown")
        if profile != expected:
            raise NpcrlError(
                f"{log_dir}: conversation {index} was played by a {profile!r} player, where this evaluation"
                f" draws {expected!r} (evaluate with the same --players or --population)"
            )
    return True
