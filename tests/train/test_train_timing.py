"""Where a training run's time goes: the phase timer's arithmetic, and the split a tiny-model run
records in its metrics, run.json and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from toy_logs import TOY_SPEC, toy_config, write_toy_logs  # noqa: E402

from npcrl.train import phase_timer  # noqa: E402
from npcrl.train.phase_timer import ITERATION_PHASES, RUN_PHASES, PhaseTimer, format_summary  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_count_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(phase_timer.time, "perf_counter", clock)
    timer = PhaseTimer()
    with timer.phase("scoring"):
        clock.now += 2.0
        with timer.phase("reference"):
            clock.now += 3.0
        clock.now += 1.0
    with timer.phase("update"):
        clock.now += 4.0
    assert timer.take_iteration() == {
        **dict.fromkeys(ITERATION_PHASES, 0.0),
        "scoring": 3.0,
        "reference": 3.0,
        "update": 4.0,
    }
    assert timer.take_iteration() == dict.fromkeys(ITERATION_PHASES, 0.0)  # taken: the next iteration starts at 0
    with timer.phase("export"):
        clock.now += 5.0
    summary = timer.summary(wall_s=20.0)
    assert set(summary) == {*ITERATION_PHASES, *RUN_PHASES, "other"}
    assert summary["scoring"] == 3.0 and summary["export"] == 5.0 and summary["other"] == 5.0
    assert sum(summary.values()) == pytest.approx(20.0)
    table = format_summary(summary, 20.0)
    assert "export" in table and "25.0%" in table and "sampling" not in table  # phases that took no time are left out


def test_a_phase_that_raises_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(phase_timer.time, "perf_counter", clock)
    timer = PhaseTimer()
    with pytest.raises(ValueError), timer.phase("update"):
        clock.now += 1.5
        raise ValueError("boom")
    assert timer.totals == {"update": 1.5}


@pytest.fixture(scope="module")
def toy_run(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-iteration LoRA run of the toy task, trained through ``npcrl.train.run.train``."""
    from npcrl.train.run import train

    root = tmp_path_factory.mktemp("timed")
    bundle = tiny_bundles["llama-fp32"]
    write_toy_logs(bundle, root / "logs", 96, seed=0)
    spec = root / "toy-rewards.toml"
    spec.write_text(TOY_SPEC, encoding="utf-8")
    config = toy_config("lora", iterations=3, rollout_turns=16, minibatch_turns=8, micro_batch_turns=4)
    config.data.reward_spec = str(spec)
    result = train(root / "logs", bundle, root / "out", config.validate(), progress=False)
    assert result is not None
    return {"out": root / "out", "result": result}


def test_a_run_records_its_time_by_phase(toy_run: dict[str, Any]) -> None:
    out = toy_run["out"]
    record = json.loads((out / "run.json").read_text())
    wall, phases = record["time_s"], record["phases_s"]
    assert set(phases) >= {*ITERATION_PHASES, *RUN_PHASES, "other"}
    assert all(seconds >= 0 for seconds in phases.values()), phases
    assert sum(phases.values()) == pytest.approx(wall)  # "other" is the rest of the wall time
    assert sum(v for k, v in phases.items() if k != "other") <= wall
    ran = ("setup", "scoring", "reference", "advantages", "update", "checkpoint", "off_policy", "samples")
    assert all(phases[name] > 0 for name in (*ran, "final_checkpoint", "report")), phases
    assert phases["sampling"] == 0.0  # logged mode: nothing is sampled
    assert "## Where the time went" in (out / "report" / "report.md").read_text()


def test_each_iteration_records_its_own_split(toy_run: dict[str, Any]) -> None:
    rows = [json.loads(line) for line in (toy_run["out"] / "report" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        split = row["phases_s"]
        assert set(split) == set(ITERATION_PHASES)
        assert all(seconds >= 0 for seconds in split.values())
        # the checkpoint is written after the iteration's own clock stops
        assert sum(v for k, v in split.items() if k != "checkpoint") <= row["time_s"]
        assert split["scoring"] > 0 and split["update"] > 0 and split["checkpoint"] > 0
    # Before the first update the policy is the reference: no reference pass in iteration 1.
    assert rows[0]["phases_s"]["reference"] == 0.0
    assert all(row["phases_s"]["reference"] > 0 for row in rows[1:])
