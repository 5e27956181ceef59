"""The promotion guard on persona-card contradictions: a candidate whose lines contradict their
cards more often than the current bundle's is never promoted, however much more it engages."""

from __future__ import annotations

import math

import pytest

from npcrl.evaluation import metric_names as metric
from npcrl.loop.decision import Guards, decide


def rows(engagement: float, contradictions: float | None) -> dict:
    row = {
        metric.ENGAGEMENT: (engagement, engagement - 0.1, engagement + 0.1),
        metric.KL_PER_LINE: 1.0,
        metric.PERPLEXITY: 50.0,
        metric.REPETITION_RATE: 0.01,
        metric.WORDS_PER_LINE: 20.0,
    }
    if contradictions is not None:
        row[metric.CARD_CONTRADICTIONS] = contradictions
    return row


@pytest.mark.parametrize(
    ("candidate", "current", "vetoed"),
    [
        (0.03, 0.02, False),  # +0.01: within the default 0.02
        (0.02, 0.05, False),  # fewer contradictions
        (0.10, 0.05, True),  # +0.05
        (math.nan, 0.05, True),  # unmeasured candidate: vetoed, like every NaN guard metric
        (0.05, math.nan, True),  # nothing to compare a measured candidate with: vetoed too
        (math.nan, math.nan, False),  # no known card in either: nothing to guard
        (None, 0.05, False),  # rows evaluated before the metric existed
        (0.05, None, False),
    ],
)
def test_a_rise_in_contradictions_vetoes_the_winner(candidate, current, vetoed):
    promoted, reasons = decide(rows(0.9, candidate), rows(0.5, current), base_perplexity=50.0, guards=Guards())
    guard = [r for r in reasons if "card contradictions" in r]
    assert promoted is not vetoed and bool(guard) is vetoed
    if vetoed and math.isfinite(candidate - current):
        assert guard == [f"guard: card contradictions per line rose by {candidate - current:.3f}"]


def test_the_limit_is_configurable():
    candidate, current = rows(0.9, 0.10), rows(0.5, 0.05)
    assert not decide(candidate, current, 50.0, Guards())[0]
    assert decide(candidate, current, 50.0, Guards(max_contradiction_increase=0.06))[0]


def test_a_loop_started_before_the_guard_existed_resumes(tmp_path):
    """Its loop.json has no max_contradiction_increase: resuming with the default must work, and
    resuming with another value must be refused (the finished rounds never had that guard)."""
    import json
    from dataclasses import asdict, replace

    import pytest

    from npcrl.errors import LoopError
    from npcrl.loop.decision import Guards
    from npcrl.loop.state import LOOP_FILE, check_loop_out

    record = {"rounds": 2, "seed": 0, "guards": asdict(Guards())}
    old = {**record, "guards": {k: v for k, v in asdict(Guards()).items() if k != "max_contradiction_increase"}}
    (tmp_path / LOOP_FILE).write_text(json.dumps(old), encoding="utf-8")
    check_loop_out(tmp_path, resume=True, record=record)
    stricter = {**record, "guards": asdict(replace(Guards(), max_contradiction_increase=0.0))}
    with pytest.raises(LoopError, match="guards"):
        check_loop_out(tmp_path, resume=True, record=stricter)
