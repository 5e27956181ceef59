"""The paired engagement gain split by kind of player: whom an update helped and whom it hurt.

A population can mix player profiles whose tastes pull apart (the shipped default mixes players
who want lore and long talks with players who want quests and short lines), so one gain over all
players can hide a gain on some and a loss on others. A paired evaluation plays conversation k of
each bundle with the same profile; this splits the paired differences by that profile.

The logs name a simulated player by a keyed pseudonym of its profile's name
(``npcrl.sim.draws.simulated_players``), so the split needs the profiles the evaluation played and
the pseudonym key its logs were written with; a conversation whose player is none of those
profiles under that key is an error naming it, never a silent miscount.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from npcrl.errors import LogFormatError, NpcrlError
from npcrl.evaluation.metric_names import paired_gain_of_profile
from npcrl.evaluation.metrics import paired_gain
from npcrl.evaluation.shares import require_one_set_of_players
from npcrl.playlog import read_log_dir
from npcrl.reward.engagement import group_conversations, score_conversation
from npcrl.reward.spec import RewardSpec
from npcrl.sim.draws import simulated_players


@dataclass(frozen=True)
class ProfileGain:
    """One profile's share of a paired evaluation."""

    profile: str
    conversations: int
    """paired conversations this profile played"""
    current: float
    """mean reward per conversation of the compared bundle (e.g. the base) with these players"""
    candidate: float
    """the same for the evaluated bundle"""
    gain: tuple[float, float, float]
    """paired gain per conversation with its 95% bootstrap interval: (mean, low, high)"""

    def to_json(self) -> dict[str, object]:
        return {
            "profile": self.profile,
            "conversations": self.conversations,
            "current": self.current,
            "candidate": self.candidate,
            "gain": list(self.gain),
        }


def paired_gain_by_profile(
    candidate_logs: str | os.PathLike[str],
    current_logs: str | os.PathLike[str],
    spec: RewardSpec,
    profiles: Sequence[str],
    key: bytes,
    *,
    seed: int = 0,
) -> list[ProfileGain]:
    """``paired_gain_of_logs`` per player profile, in the order of ``profiles`` (those that played
    no conversation left out). Conversations pair as there: conversation k of one log directory with
    conversation k of the other, which must be played by the same profile. ``key``: the pseudonym
    key both were written with; ``seed`` seeds the bootstraps."""
    return pooled_gain_by_profile([(candidate_logs, current_logs)], spec, profiles, key, seed=seed)


def pooled_gain_by_profile(
    pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    spec: RewardSpec,
    profiles: Sequence[str],
    key: bytes,
    *,
    seed: int = 0,
) -> list[ProfileGain]:
    """``paired_gain_by_profile`` of several evaluations pooled (as ``pooled_rewards_of_logs``
    pools them): each (candidate, current) pair is one set of players played by both bundles."""
    players = simulated_players(profiles, key)
    paired: list[tuple[str, float, float]] = []
    for candidate_logs, current_logs in pairs:
        ours = _profile_rewards(candidate_logs, spec, players)
        theirs = _profile_rewards(current_logs, spec, players)
        require_one_set_of_players((candidate_logs, len(ours)), (current_logs, len(theirs)))
        for k, ((profile, mine), (other, yours)) in enumerate(zip(ours, theirs, strict=True)):
            if profile != other:
                raise LogFormatError(
                    f"conversation {k} is played by {profile!r} in {candidate_logs} and by {other!r} in"
                    f" {current_logs}: a pair must be one set of players played by both bundles"
                )
            paired.append((profile, mine, yours))
    gains = []
    for name in profiles:
        candidate = [mine for profile, mine, _ in paired if profile == name]
        current = [yours for profile, _, yours in paired if profile == name]
        if not candidate:
            continue
        gains.append(
            ProfileGain(
                profile=name,
                conversations=len(candidate),
                current=math.fsum(current) / len(current),
                candidate=math.fsum(candidate) / len(candidate),
                gain=paired_gain(candidate, current, seed=seed),
            )
        )
    return gains


def _profile_rewards(
    log_dir: str | os.PathLike[str], spec: RewardSpec, players: dict[str, str]
) -> list[tuple[str, float]]:
    """(profile, reward earned) of each conversation with an NPC turn, in log order (the order
    ``conversation_rewards`` pairs in)."""
    played = []
    for log in group_conversations(read_log_dir(log_dir)).values():
        if not log.turns:
            continue
        player = log.start.player_id if log.start is not None else None
        profile = players.get(player or "")
        if profile is None:
            raise LogFormatError(
                f"{log_dir}: conversation {log.conversation_id!r} is "
                + ("missing its start record" if player is None else f"played by {player!r}")
                + f", none of the player profiles given ({', '.join(players.values())}) under this"
                " pseudonym key: give the profiles the evaluation played and the key its logs were written with"
            )
        played.append((profile, math.fsum(r.reward for r in score_conversation(log, spec))))
    return played


def logged_players(log_dirs: Sequence[str | os.PathLike[str]]) -> set[str | None]:
    """The logged player id of every conversation with an NPC turn in ``log_dirs`` (None for one
    missing its start record): the players ``_profile_rewards`` looks a profile up for."""
    return {
        log.start.player_id if log.start is not None else None
        for log_dir in log_dirs
        for log in group_conversations(read_log_dir(log_dir)).values()
        if log.turns
    }


def paired_gain_rows(
    candidate_logs: str | os.PathLike[str],
    current_logs: str | os.PathLike[str],
    spec: RewardSpec,
    profiles: Sequence[str],
    *,
    seed: int = 0,
) -> tuple[dict[str, tuple[float, float, float]], str | None]:
    """``paired_gain_by_profile`` as report rows (``metric_names.paired_gain_of_profile``) for an
    evaluation this machine played, read with its pseudonym key; none with a single profile. Logs
    the split cannot read (no key here, another key, other players, sides that do not pair) give no
    rows and the reason, the second item: the split is a report, never a reason to stop a run."""
    from npcrl.paths import default_key_path
    from npcrl.privacy.pseudonym import load_key

    if len(profiles) < 2:
        return {}, None
    try:
        key = load_key(default_key_path())
        splits = paired_gain_by_profile(candidate_logs, current_logs, spec, profiles, key, seed=seed)
    except (NpcrlError, ValueError) as exc:  # LogFormatError, PseudonymKeyError; unequal sides
        return {}, f"the gain per player profile is left out: {exc}"
    return {paired_gain_of_profile(split.profile): split.gain for split in splits}, None
