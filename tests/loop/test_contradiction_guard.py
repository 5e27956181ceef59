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


def probed(row: dict, counts: list[int], play_rise: tuple[float, float, float] | None = None) -> dict:
    """``row`` with a persona probe of 4 conversations of 4 lines (``npcrl.evaluation.persona_probe``)
    and, for a candidate, the paired rise of its play's contradiction share."""
    from npcrl.evaluation.persona_probe import PROBE_COUNTS, PROBE_SETUP, ProbeSetup

    probe = {PROBE_COUNTS: counts, PROBE_SETUP: ProbeSetup(8, 0, ("a", "b"), 40).to_dict()}
    return {**row, **probe, **({} if play_rise is None else {metric.CARD_CONTRADICTIONS_RISE: play_rise})}


UNRESOLVED_PLAY_RISE = (0.05, -0.01, 0.11)


def test_where_both_bundles_answered_the_persona_probe_it_is_the_guard() -> None:
    """The play's share rose by 0.05 (a veto without the probe), but within chance; with the probe
    both paired rises decide: within chance the candidate passes, and the decision says how close it
    came; a probe rise beyond chance vetoes and says by how much."""
    current = probed(rows(0.5, 0.05), [1, 1, 1, 1])
    assert not decide(rows(0.9, 0.10), rows(0.5, 0.05), 50.0, Guards())[0]  # the play's point alone vetoes
    promoted, reasons = decide(probed(rows(0.9, 0.10), [2, 1, 1, 1], UNRESOLVED_PLAY_RISE), current, 50.0, Guards())
    assert promoted and not any(r.startswith("guard:") for r in reasons)  # +1 line in 16: chance
    note = "card contradictions per line: persona probe +0.062, 95% CI [-0.060, 0.185]; in play +0.050, 95% CI [-0.010, 0.110]"
    assert note in reasons
    promoted, reasons = decide(probed(rows(0.9, 0.0), [3, 3, 2, 3], (-0.05, -0.1, 0.0)), current, 50.0, Guards())
    assert not promoted
    assert [r for r in reasons if r.startswith("guard:")] == [
        "guard: persona probe: card contradictions per line rose by 0.438 (95% CI [0.315, 0.560])"
    ]
    # a probe of another setup does not pair: the play's point decides again
    other = {
        **probed(rows(0.9, 0.10), [1, 1, 1, 1], UNRESOLVED_PLAY_RISE),
        "persona probe: setup": {"lines_per_persona": 4},
    }
    assert not decide(other, current, 50.0, Guards())[0]


@pytest.mark.parametrize(
    ("play_rise", "vetoed"),
    [
        ((0.032, 0.002, 0.062), True),  # resolved above zero: vetoed, though the probe held
        ((0.020, -0.003, 0.043), False),
        (None, True),  # the evaluations did not pair (no row): unmeasured, vetoed
        ((math.nan,) * 3, True),
    ],
)
def test_with_the_probe_a_rise_in_play_beyond_chance_still_vetoes(play_rise, vetoed) -> None:
    """Identity questions are not all of play: a rise the play itself resolves vetoes even where the
    probe held (the adaptive penalty's candidate in docs/RESULTS.md: +0.032 [+0.002, +0.062])."""
    current = probed(rows(0.5, 0.048), [1, 1, 1, 1])
    promoted, reasons = decide(probed(rows(0.9, 0.08), [1, 1, 1, 1], play_rise), current, 50.0, Guards())
    guard = [r for r in reasons if r.startswith("guard: card contradictions per line in play")]
    assert promoted is not vetoed and bool(guard) is vetoed


def test_a_probe_with_no_known_card_in_play_leaves_the_play_unguarded() -> None:
    current = probed(rows(0.5, math.nan), [1, 1, 1, 1])
    assert decide(probed(rows(0.9, math.nan), [1, 1, 1, 1]), current, 50.0, Guards())[0]


def test_a_negative_probe_size_is_refused_before_any_play(tmp_path) -> None:
    from npcrl.errors import LoopError
    from npcrl.loop.run import run_loop

    with pytest.raises(LoopError, match="persona_probe_lines must be 0"):
        run_loop("B", tmp_path / "loop", 1, 4, 2, None, guards=Guards(persona_probe_lines=-1))
    assert not (tmp_path / "loop").exists()
