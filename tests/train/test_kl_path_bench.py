"""bench/kl_path.py lines runs up by optimizer steps: recorded ones, or derived for runs from before
the metrics recorded them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from script_modules import load_script


def _kl_path() -> Any:
    return load_script("kl_path_bench", "bench/kl_path.py")


def _run(directory: Path, records: list[dict[str, Any]], minibatch_turns: int) -> Path:
    (directory / "report").mkdir(parents=True)
    (directory / "report" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    provenance = {"config": {"ppo": {"minibatch_turns": 8}}, "minibatch_turns": minibatch_turns}
    (directory / "report" / "provenance.json").write_text(json.dumps(provenance))
    return directory


def test_steps_are_read_where_recorded_and_derived_where_not(tmp_path: Path) -> None:
    bench = _kl_path()
    old = [{"turns": 16, "epochs_run": 1.0, "kl_per_turn": kl} for kl in (0.0, 0.2, 0.4)]
    # 16 turns in minibatches of 8, one epoch: 2 steps an iteration; two epochs: 4
    old[2]["epochs_run"] = 2.0
    rows = bench.kl_path(_run(tmp_path / "old", old, 8), window=2)
    assert [r["steps"] for r in rows] == [2, 4, 8]
    assert [r["turns"] for r in rows] == [16, 32, 48]
    assert [round(r["kl"], 3) for r in rows] == [0.0, 0.1, 0.3]  # the mean of the last two iterations

    # a scaled run records its steps: 64 turns an iteration in minibatches of 32
    new = [{"turns": 64, "epochs_run": 1.0, "kl_per_turn": 0.5, "optimizer_steps": s} for s in (2, 3)]
    rows = bench.kl_path(_run(tmp_path / "new", new, 32), window=5)
    assert [r["steps"] for r in rows] == [2, 3] and rows[-1]["turns"] == 128
