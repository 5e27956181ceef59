"""The simulated players' own view of logged NPC lines: for the diagnostics that ask how much a
perfect reader of the lines could know (``reward_ceiling.py``, ``onpolicy_ceiling.py``).

A learned reward model never sees these features; they are what the simulator's players react
to (``npcrl.sim.features``), so a predictor built on them is an upper reference, not a product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    from npcrl.paths import default_key_path
    from npcrl.playlog import LogReader
    from npcrl.privacy.pseudonym import load_or_create_key
    from npcrl.reward.engagement import group_conversations, score_conversation
    from npcrl.reward.spec import default_reward_spec
    from npcrl.sim.draws import PLAYER_ID_PREFIX, simulated_players
    from npcrl.sim.features import line_features
    from npcrl.sim.populations import shipped_profiles

    spec = default_reward_spec()
    # The writer stores a keyed pseudonym of each player id: map the simulated players' ids back
    # with the same (default) key, for the profiles of every shipped population (an `npcrl
    # populations` run's logs are played by one of them); logs written before pseudonyms carry
    # the id itself.
    key = load_or_create_key(default_key_path())
    profiles = simulated_players(shipped_profiles(), key)
    rows = []
    for cid, log in sorted(group_conversations(LogReader(logs)).items()):
        player = log.start.player_id if log.start is not None else ""
        profile = profiles.get(player, player.removeprefix(PLAYER_ID_PREFIX))
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


def profile_design(rows: list[FeatureRow], profiles: list[str]) -> np.ndarray:
    """``design_row`` of every row, one row each."""
    from npcrl.sim.features import FEATURES

    return np.array([design_row(row.features, row.profile, profiles, FEATURES) for row in rows])


@dataclass(frozen=True)
class RidgeFit:
    penalty: float
    pearson_r: float
    """of the cross-validated predictions at the chosen penalty"""
    mse_skill: float
    """1 - cross-validated MSE / the rewards' variance"""
    weights: np.ndarray
    bias: float
    """refitted on every row at the chosen penalty"""


def cross_validated_ridge(x: np.ndarray, rows: list[FeatureRow], folds: int) -> RidgeFit:
    """Ridge of the rows' rewards on ``x``, the penalty chosen by cross-validation with folds by
    conversation (as the reward model chooses its own), refitted on every row."""
    from npcrl.reward.model_data import conversation_folds
    from npcrl.reward.ridge import RIDGE_PENALTIES, ridge_fit, select_ridge_penalty

    y = np.array([row.reward for row in rows])
    held = conversation_folds([row.conversation_id for row in rows], folds, seed=0)
    predictions, cv_mse, best = select_ridge_penalty(x, y, held)
    weights, bias = ridge_fit(x, y, [RIDGE_PENALTIES[best]])[0]
    return RidgeFit(
        RIDGE_PENALTIES[best],
        float(np.corrcoef(predictions[best], y)[0, 1]),
        float(1 - cv_mse[best] / y.var()),
        weights,
        bias,
    )
