"""Shares of lines (a count over a number of lines, per conversation) and their 95% intervals, the
conversations as clusters: the lines of one conversation share a player, a persona and a history,
so they are not independent draws."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

Z_95 = 1.96


def ratio_interval(counts: Sequence[float], sizes: Sequence[int]) -> tuple[float, float, float]:
    """``sum(counts) / sum(sizes)`` with its 95% interval (normal approximation of a ratio
    estimator over the conversations); the interval is the point where there is one conversation."""
    n, total = len(counts), sum(sizes)
    ratio = sum(counts) / total
    if n < 2:
        return ratio, ratio, ratio
    residuals = sum((c - ratio * s) ** 2 for c, s in zip(counts, sizes, strict=True))
    half = Z_95 * math.sqrt(residuals * n / (n - 1)) / total
    return ratio, ratio - half, ratio + half


def paired_share_rise(ours: Sequence[tuple[int, int]], theirs: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    """Our share minus theirs, with its 95% interval, conversation k of ``ours`` paired with
    conversation k of ``theirs`` (the same player and seeds); each item is (count, lines). The
    interval is the normal one of the difference of two ratio estimators, linearised per pair."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(
            f"paired shares need as many conversations on both sides (>= 1), got {len(ours)} and {len(theirs)}"
        )
    n = len(ours)
    our_lines, their_lines = sum(s for _, s in ours), sum(s for _, s in theirs)
    if our_lines == 0 or their_lines == 0:
        raise ValueError("paired shares need at least one line on each side")
    a, b = sum(c for c, _ in ours) / our_lines, sum(c for c, _ in theirs) / their_lines
    rise = a - b
    if n < 2:
        return rise, rise, rise
    influence = [
        n * ((c - a * s) / our_lines - (d - b * t) / their_lines) for (c, s), (d, t) in zip(ours, theirs, strict=True)
    ]
    half = Z_95 * math.sqrt(sum(x * x for x in influence) / (n - 1) / n)
    return rise, rise - half, rise + half


def require_one_set_of_players(
    candidate: tuple[str | os.PathLike[str], int], current: tuple[str | os.PathLike[str], int]
) -> None:
    """Refuse, naming both, two evaluations' (log directory, conversations with an NPC turn) that
    cannot be one set of players played by both bundles: their counts differ."""
    (candidate_logs, ours), (current_logs, theirs) = candidate, current
    if ours != theirs:
        raise ValueError(
            f"{candidate_logs} has {ours} conversations with an NPC turn and {current_logs} has "
            f"{theirs}: a pair must be one set of players played by both bundles"
        )
