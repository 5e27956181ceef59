"""The table cell that says how far a round trained (``npcrl populations`` and ``npcrl curve``)."""

from __future__ import annotations

import json
from pathlib import Path

from npcrl.loop.trained import trained_how_far, training_cell


def test_the_training_cell_says_how_far_the_round_trained_and_why_it_stopped() -> None:
    assert training_cell({"iterations": 43, "most_iterations": 84, "kl_stop_reached": True}) == "43 of ≤ 84, KL stop"
    assert (
        training_cell({"iterations": 43, "most_iterations": 84, "passes_run": 2.0476, "kl_stop_reached": True})
        == "43 of ≤ 84 (2.05 passes), KL stop"
    )
    assert training_cell({"iterations": 61, "most_iterations": 61, "kl_stop_reached": False}) == "61 of ≤ 61"
    assert training_cell({"iterations": 52, "kl_stop_reached": False}) == "52"  # recorded before the cap was
    assert training_cell({}) == "-"
    # a rollout scaled to the logs says how many turns each iteration read; an unscaled one does not
    scaled = {"iterations": 55, "most_iterations": 219, "passes_run": 1.0, "rollout_turns": 128, "batch_scale": 8}
    assert training_cell(scaled) == "55 of ≤ 219 (1.00 passes, 128 turns each)"
    assert training_cell({**scaled, "rollout_turns": 16, "batch_scale": 1}) == "55 of ≤ 219 (1.00 passes)"


def test_how_far_is_read_from_the_provenance_and_keeps_only_its_own_fields(tmp_path: Path) -> None:
    assert trained_how_far(tmp_path / "train") == {}  # not trained yet
    (tmp_path / "train" / "report").mkdir(parents=True)
    recorded = {"iterations": 3, "most_iterations": 9, "kl_stop_reached": True, "config": {}, "batch_scale": 2}
    (tmp_path / "train" / "report" / "provenance.json").write_text(json.dumps(recorded))
    assert trained_how_far(tmp_path / "train") == {
        "iterations": 3,
        "most_iterations": 9,
        "kl_stop_reached": True,
        "batch_scale": 2,
    }
