"""How well a reward model's predictions track the logged rewards: correlations, MSE against the
predict-the-mean baseline, and the accuracy of "engaged" next to the majority class.

Pure numpy; used when a reward model is trained (its held-out conversations) and when it scores
logs it never saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.float64)
    out[order] = np.arange(1, len(values) + 1, dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            out[tied] = out[tied].mean()
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """None when either side is constant (the correlation is undefined, not 0)."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else None


def regression_metrics(
    predictions: Sequence[float], targets: Sequence[float], baseline: float, threshold: float
) -> dict[str, Any]:
    """How well ``predictions`` track ``targets`` (both in reward units).

    ``baseline`` is the constant prediction to beat (the training turns' mean reward);
    ``mse_skill = 1 - mse / baseline_mse`` (> 0: better than the baseline). "Engaged" means
    reward > ``threshold``; ``engaged_accuracy`` is the share of turns where
    (prediction > threshold) == (reward > threshold) and ``majority_accuracy`` what always
    answering the commoner class scores.
    """
    p = np.asarray(predictions, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"need two equally long non-empty lists, got {p.shape} and {t.shape}")
    mse = float(((p - t) ** 2).mean())
    baseline_mse = float(((baseline - t) ** 2).mean())
    engaged = t > threshold
    engaged_rate = float(engaged.mean())
    return {
        "turns": len(t),
        "pearson": pearson(p, t),
        "spearman": pearson(ranks(p), ranks(t)),
        "mse": mse,
        "baseline_mse": baseline_mse,
        "baseline": float(baseline),
        "mse_skill": 1.0 - mse / baseline_mse if baseline_mse > 0 else None,
        "engaged_threshold": float(threshold),
        "engaged_rate": engaged_rate,
        "engaged_accuracy": float(((p > threshold) == engaged).mean()),
        "majority_accuracy": max(engaged_rate, 1.0 - engaged_rate),
        "prediction_mean": float(p.mean()),
        "reward_mean": float(t.mean()),
    }


# (row label, metric key, format) of the printed table, in order
TABLE_ROWS = (
    ("turns", "turns", "{:d}"),
    ("Pearson r", "pearson", "{:.3f}"),
    ("Spearman rho", "spearman", "{:.3f}"),
    ("MSE", "mse", "{:.4f}"),
    ("MSE, predict the train mean", "baseline_mse", "{:.4f}"),
    ("MSE skill (1 - MSE / baseline)", "mse_skill", "{:.3f}"),
    ("engaged accuracy", "engaged_accuracy", "{:.3f}"),
    ("majority-class accuracy", "majority_accuracy", "{:.3f}"),
    ("engaged rate", "engaged_rate", "{:.3f}"),
    ("mean reward", "reward_mean", "{:.4f}"),
    ("mean prediction", "prediction_mean", "{:.4f}"),
    ("prediction sd", "prediction_sd", "{:.4f}"),
)


def format_metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The metrics of each split (columns) as an aligned text table; rows whose key the first
    split lacks (``prediction_sd`` is only computed when scoring logs) are left out."""
    splits = list(metrics)
    first = next(iter(metrics.values()))
    widths = [max(12, len(split) + 2) for split in splits]
    lines = [f"{'metric':<32}" + "".join(f"{s:>{w}}" for s, w in zip(splits, widths, strict=True))]
    for label, key, fmt in TABLE_ROWS:
        if key not in first:
            continue
        cells = []
        for split, width in zip(splits, widths, strict=True):
            value = metrics[split][key]
            cells.append(f"{'n/a' if value is None else fmt.format(value):>{width}}")
        lines.append(f"{label:<32}" + "".join(cells))
    lines.append(f"(engaged: reward > {first['engaged_threshold']:g})")
    return "\n".join(lines)
