"""The simulated players' own view of logged NPC lines: for the diagnostics that ask how much a
perfect reader of the lines could know (``reward_ceiling.py``, ``onpolicy_ceiling.py``).

A learned reward model never sees these features; they are what the simulator's players react
to (``npcrl.sim.features``), so a predictor built on them is an upper reference, not a product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROFILE_PREFIX = "sim-"  # simulated conversations log their player as "sim-<profile>"


@dataclass(frozen=True)
class FeatureRow:
    conversation_id: str
    turn_index: int
    npc_id: str
    profile: str
    prompt_ids: tuple[int, ...]
    earlier_lines: tuple[str, ...]
    """the NPC's lines before this one in the conversation (for the repetition feature)"""
    features: dict[str, float]
    reward: float


def logged_feature_rows(logs: str, personas: dict) -> list[FeatureRow]:
    """Every scored turn of the simulated play logs in ``logs``, with the simulator's features of its line."""
    from npcrl.engagement import group_conversations, score_conversation
    from npcrl.playlog import LogReader
    from npcrl.rewards import default_reward_spec
    from npcrl.sim.features import line_features

    spec = default_reward_spec()
    rows = []
    for cid, log in sorted(group_conversations(LogReader(logs)).items()):
        player = log.start.player_id if log.start is not None else ""
        profile = player[len(PROFILE_PREFIX) :] if player.startswith(PROFILE_PREFIX) else player
        earlier: list[str] = []
        for reward in score_conversation(log, spec):
            turn = log.turns[reward.turn_index]
            persona = personas.get(turn.npc_id)
            if persona is None:
                raise SystemExit(f"{logs}: conversation {cid} is with NPC {turn.npc_id!r}, not in the personas")
            features = line_features(turn.text, persona, earlier)
            rows.append(
                FeatureRow(
                    cid,
                    reward.turn_index,
                    turn.npc_id,
                    profile,
                    tuple(turn.prompt_ids),
                    tuple(earlier),
                    features,
                    reward.reward,
                )
            )
            earlier.append(turn.text)
    if not rows:
        raise SystemExit(f"{logs}: no scored NPC turns (a play-log directory of simulated conversations?)")
    return rows


def design_row(features: dict[str, float], profile: str, profiles: list[str], names: tuple[str, ...]) -> np.ndarray:
    """Features, the profile as one-hot, and each feature times each profile: a linear predictor on
    this row can weigh a line's features per kind of player, as the profiles do."""
    f = np.array([features[name] for name in names])
    onehot = np.array([1.0 if profile == p else 0.0 for p in profiles])
    return np.concatenate([f, onehot, np.outer(onehot, f).ravel()])
