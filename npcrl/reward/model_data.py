"""What a reward model learns from, apart from the network: its standardised regression targets
and the conversation folds that cross-validate a fit.

Pure numpy. The turns themselves (prompt + response token ids and the reward each earned) come
from the trainer's data stage, with its conversation-level train/holdout split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from npcrl.errors import TrainError

# Below this standard deviation the rewards count as constant: there is nothing to scale.
MIN_REWARD_STD = 1e-6


def target_scaling(rewards: Sequence[float]) -> tuple[float, float]:
    """(mean, standard deviation) of the training turns' rewards: the head predicts
    ``(reward - mean) / std``, so one learning rate suits any reward spec."""
    values = np.asarray(rewards, dtype=np.float64)
    std = float(values.std())
    return float(values.mean()), std if std > MIN_REWARD_STD else 1.0


def standardised(rewards: Sequence[float], mean: float, std: float) -> np.ndarray:
    """The regression targets: rewards in units of the training turns' spread, float64."""
    return (np.asarray(rewards, dtype=np.float64) - mean) / std


def conversation_folds(conversation_ids: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Boolean held-out masks over rows whose conversations are ``conversation_ids``: conversations
    dealt into ``folds`` seeded groups (fewer when there are fewer conversations), so no
    conversation is on both sides of a fold."""
    conversations = sorted(set(conversation_ids))
    if len(conversations) < 2:
        raise TrainError(
            f"cross-validating the ridge penalty needs >= 2 training conversations, got {len(conversations)}"
        )
    order = np.random.default_rng([seed, 11]).permutation(len(conversations))
    fold_of = {conversations[c]: k % folds for k, c in enumerate(order)}
    ids = np.array([fold_of[c] for c in conversation_ids])
    return [ids == k for k in range(min(folds, len(conversations)))]
