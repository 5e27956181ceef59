"""``ppo.kl_stop``: a run ends once the policy has moved a set KL from the reference, not after a
set number of passes over however many turns the players left in the logs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("torch")

from toy_logs import toy_config, toy_inputs  # noqa: E402

from npcrl.errors import TrainConfigError  # noqa: E402
from npcrl.train.config import PPOConfig  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402
from npcrl.train.run import train  # noqa: E402


@pytest.fixture(scope="module")
def toy(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama bundle and play logs of a toy task it can learn (so updates move it)."""
    return toy_inputs(tiny_bundles["llama-fp32"], tmp_path_factory.mktemp("kl-stop"), 120)


def run_train(toy: dict[str, Any], out: Path, **ppo: Any) -> Any:
    config = toy_config("full", **ppo)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, reward_spec=str(toy["spec"])))
    return train(toy["logs"], toy["bundle"], out, config, progress=False)


def test_the_run_stops_once_the_policy_reached_the_kl(
    toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # At most 4 iterations; the first one's KL is 0 (no update yet), so a window of 2 that asks for
    # any KL at all ends the run after iteration 2.
    run_train(toy, tmp_path / "stopped", iterations=4, kl_stop=1e-9, kl_stop_window=2)
    metrics = [
        json.loads(line) for line in (tmp_path / "stopped" / "report" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert metrics[0]["kl_per_turn"] == 0.0 and metrics[1]["kl_per_turn"] > 0.0
    recorded = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert recorded["finished_iterations"] == 2
    provenance = json.loads((tmp_path / "stopped" / "report" / "provenance.json").read_text())
    assert provenance["iterations"] == 2 and provenance["kl_stop_reached"] is True
    # two rollouts of 32 turns, inside the first pass: the stop left the other training turns unread
    turns = provenance["data"]["train_turns"]
    assert provenance["turns_read"] == 64 < turns
    assert provenance["passes_run"] == round(64 / turns, 3)
    assert f"0.67 passes over the {turns} training turns, {turns - 64} of them never read" in capsys.readouterr().out

    # a KL the run never reaches: every iteration runs
    run_train(toy, tmp_path / "full", iterations=3, kl_stop=1000.0, kl_stop_window=2)
    assert json.loads((tmp_path / "full" / "run.json").read_text())["finished_iterations"] == 3


def test_the_stop_averages_the_last_iterations_kl() -> None:
    def reached(kls: list[float], stop: float | None, window: int) -> bool:
        ppo = PPOConfig(kl_stop=stop, kl_stop_window=window)
        trainer = SimpleNamespace(config=SimpleNamespace(ppo=ppo), metrics=[{"kl_per_turn": k} for k in kls])
        return PPOTrainer.kl_stop_reached(trainer)  # type: ignore[arg-type]

    assert not reached([2.0], stop=1.0, window=2)  # fewer iterations than the window
    assert not reached([0.0, 2.0, 0.5, 1.2], stop=1.0, window=2)  # one high rollout is not enough
    assert reached([0.0, 0.5, 1.0, 1.2], stop=1.0, window=2)
    assert reached([5.0], stop=1.0, window=1)
    assert not reached([5.0, 5.0], stop=None, window=1)  # off


def test_a_kl_stop_out_of_range_is_refused_by_name() -> None:
    with pytest.raises(TrainConfigError, match="ppo.kl_stop"):
        toy_config(kl_stop=0.0)
    with pytest.raises(TrainConfigError, match="ppo.kl_stop_window"):
        toy_config(kl_stop=1.0, kl_stop_window=0)
