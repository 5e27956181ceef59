"""Ridge regression in closed form for a reward model's head on a frozen backbone: one SVD serves
every penalty, and the penalty is chosen by cross-validation over conversation folds.

With a few hundred logged turns this is the fit that generalises (docs/TRAINING.md). Pure numpy:
the features are the backbone's pooled hidden states, computed by the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RIDGE_PENALTIES = tuple(10.0**k for k in range(-4, 5))
"""ridge penalties tried, in units of the mean squared singular value of the centred features (scale-free)"""


def ridge_fit(features: np.ndarray, targets: np.ndarray, penalties: Sequence[float]) -> list[tuple[np.ndarray, float]]:
    """(weights, bias) minimising ``|X w + b - y|^2 + lam |w|^2`` for each penalty (b is not penalised).

    One SVD of the centred features serves every penalty; a penalty is ``penalty * mean(s^2)``.
    """
    x_mean, y_mean = features.mean(axis=0), float(targets.mean())
    u, s, vt = np.linalg.svd(features - x_mean, full_matrices=False)
    scale = float((s**2).mean()) if s.size and float((s**2).mean()) > 0 else 1.0
    projected = u.T @ (targets - y_mean)
    solutions = []
    for penalty in penalties:
        weights = vt.T @ (s / (s**2 + penalty * scale) * projected)
        solutions.append((weights, y_mean - float(x_mean @ weights)))
    return solutions


def cross_validated_predictions(
    features: np.ndarray, targets: np.ndarray, folds: Sequence[np.ndarray], penalties: Sequence[float]
) -> np.ndarray:
    """(len(penalties), N): each row's prediction by the ridge fitted on the other folds, per penalty."""
    predictions = np.zeros((len(penalties), len(targets)))
    for held in folds:
        for k, (weights, bias) in enumerate(ridge_fit(features[~held], targets[~held], penalties)):
            predictions[k, held] = features[held] @ weights + bias
    return predictions


def select_ridge_penalty(
    features: np.ndarray, targets: np.ndarray, folds: Sequence[np.ndarray], penalties: Sequence[float] = RIDGE_PENALTIES
) -> tuple[np.ndarray, np.ndarray, int]:
    """(cross-validated predictions per penalty, their MSE per penalty, the index of the lowest MSE)."""
    predictions = cross_validated_predictions(features, targets, folds, penalties)
    cv_mse = ((predictions - targets) ** 2).mean(axis=1)
    return predictions, cv_mse, int(np.argmin(cv_mse))
