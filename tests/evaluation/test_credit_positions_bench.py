"""bench/credit_positions.py: where in a line a training run's credit lands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from script_modules import load_script


def test_the_spread_and_the_reward_link_of_each_position(tmp_path: Path, monkeypatch, capsys) -> None:
    # Iterations 1-2: the last token follows the reward, the first is flat (credit that never
    # reached the start); iterations 3-4: both follow it.
    rows = []
    for iteration in range(1, 5):
        for k, reward in enumerate((-1.0, 0.0, 1.0, 2.0)):
            first = 0.1 * reward if iteration > 2 else 0.5
            rows.append(
                {
                    "iteration": iteration,
                    "turn": f"c{k}#0",
                    "reward": reward,
                    "advantage_first": first,
                    "advantage_last": reward,
                    "advantage_mean": (first + reward) / 2,
                }
            )
    path = tmp_path / "turn_credit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    bench = load_script("credit_positions_bench", "bench/credit_positions.py")
    monkeypatch.setattr("sys.argv", ["credit_positions.py", str(path), "--bands", "2"])
    bench.main()
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1–2") or line.startswith("| 3–4")
    ]
    early, late = (line.strip("| ").split(" | ") for line in lines)
    sd_rewards = math.sqrt(1.25)
    assert early[:4] == ["1–2", "8", "0.000", f"{sd_rewards:.3f}"]
    assert early[5:] == ["flat", "+1.00", "+1.00"]
    assert late[:4] == ["3–4", "8", f"{0.1 * sd_rewards:.3f}", f"{sd_rewards:.3f}"]
    assert late[5:] == ["+1.00", "+1.00", "+1.00"]


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch) -> None:
    bench = load_script("credit_positions_bench", "bench/credit_positions.py")
    monkeypatch.setattr("sys.argv", ["credit_positions.py", str(tmp_path / "nope.jsonl")])
    with pytest.raises(SystemExit, match="nope.jsonl: no such file"):
        bench.main()
