"""Shares of lines over conversations and the paired rise between two evaluations, hand computed."""

from __future__ import annotations

import math

import pytest

from npcrl.evaluation.shares import paired_share_rise, ratio_interval


def test_the_ratio_interval_is_hand_computed() -> None:
    # conversations of 4 lines with 1, 3, 2 contradicting: 6 / 12 = 0.5; residuals -1, 1, 0
    share, low, high = ratio_interval([1, 3, 2], [4, 4, 4])
    half = 1.96 * math.sqrt(2 * 3 / 2) / 12
    assert share == 0.5 and low == pytest.approx(0.5 - half) and high == pytest.approx(0.5 + half)
    assert ratio_interval([2], [4]) == (0.5, 0.5, 0.5)  # one conversation: no spread to measure


def test_the_paired_rise_is_hand_computed_with_unequal_lines() -> None:
    ours, theirs = [(1, 2), (0, 4), (2, 2)], [(0, 2), (1, 5), (0, 1)]
    a, b = 3 / 8, 1 / 8
    influence = [3 * ((c - a * s) / 8 - (d - b * t) / 8) for (c, s), (d, t) in zip(ours, theirs, strict=True)]
    half = 1.96 * math.sqrt(sum(x * x for x in influence) / 2 / 3)
    assert paired_share_rise(ours, theirs) == pytest.approx((a - b, a - b - half, a - b + half))


def test_with_equal_lines_the_paired_rise_is_the_ratio_interval_of_the_differences() -> None:
    ours, theirs = [(2, 4), (1, 4), (3, 4), (0, 4)], [(1, 4), (1, 4), (1, 4), (1, 4)]
    differences = [c - d for (c, _), (d, _) in zip(ours, theirs, strict=True)]
    assert paired_share_rise(ours, theirs) == pytest.approx(ratio_interval(differences, [4] * 4))


def test_sides_that_do_not_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="got 2 and 1"):
        paired_share_rise([(1, 2), (0, 2)], [(1, 2)])
    with pytest.raises(ValueError, match="at least one line"):
        paired_share_rise([(0, 0)], [(0, 0)])
