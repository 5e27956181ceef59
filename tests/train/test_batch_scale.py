"""``ppo.max_iterations_per_pass``: the rollout and minibatch grow with the logs, so that one pass
is about the same number of optimizer steps at any log size and a KL stop still reads large logs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from npcrl.errors import TrainConfigError
from npcrl.train.config import PPOConfig


def test_the_factor_is_the_smallest_whole_one_that_keeps_a_pass_within_the_iterations() -> None:
    ppo = PPOConfig(rollout_turns=16, minibatch_turns=8, micro_batch_turns=4, max_iterations_per_pass=60)
    assert ppo.batch_scale(1) == 1
    assert ppo.batch_scale(960) == 1  # 60 iterations of 16: no change for the populations measured so far
    assert ppo.batch_scale(961) == 2
    assert ppo.batch_scale(7000) == 8  # 55 iterations of 128
    scaled = ppo.scaled_to_logs(7000)
    assert (scaled.rollout_turns, scaled.minibatch_turns, scaled.micro_batch_turns) == (128, 64, 4)
    assert scaled.validate() is None and ppo.rollout_turns == 16  # the given settings are not changed
    # off: the sizes are used as given whatever the logs
    off = PPOConfig(max_iterations_per_pass=0)
    assert off.batch_scale(10**6) == 1 and off.scaled_to_logs(10**6) == off
    assert PPOConfig().batch_scale(1024) == 1 and PPOConfig().batch_scale(1025) == 2  # the default: 64


def test_a_negative_cap_is_refused_by_name() -> None:
    with pytest.raises(TrainConfigError, match="ppo.max_iterations_per_pass"):
        PPOConfig(max_iterations_per_pass=-1).validate()


@pytest.fixture(scope="module")
def toy(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    from toy_logs import toy_inputs

    return toy_inputs(tiny_bundles["llama-fp32"], tmp_path_factory.mktemp("batch-scale"), 120)


def test_a_run_reads_its_logs_in_rollouts_scaled_to_them(
    toy: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from toy_logs import toy_config

    from npcrl.train.run import train

    # 96 training turns, rollouts of 32: one pass is 3 iterations; capped at 1, the rollout is all 96
    config = toy_config("full", iterations=0, passes=1.0, max_iterations_per_pass=1)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, reward_spec=str(toy["spec"])))
    train(toy["logs"], toy["bundle"], tmp_path / "scaled", config, progress=False)
    provenance = json.loads((tmp_path / "scaled" / "report" / "provenance.json").read_text())
    turns = provenance["data"]["train_turns"]
    assert turns == 96
    assert provenance["iterations"] == provenance["most_iterations"] == 1
    assert (provenance["batch_scale"], provenance["rollout_turns"], provenance["minibatch_turns"]) == (3, 96, 48)
    assert provenance["turns_read"] == 96 and provenance["passes_run"] == 1.0
    # the recorded config keeps the sizes as given; the log line names what the run used
    assert provenance["config"]["ppo"]["rollout_turns"] == 32
    assert "1 iterations of 96 turns (3 x ppo.rollout_turns, minibatches of 48" in capsys.readouterr().out
