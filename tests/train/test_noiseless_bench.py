"""bench/logged_ceiling.py and bench/probe_denoise.py: the noiseless score a simulated player gives a
line, put in place of the logged rewards, and the probe's comparison with it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from script_modules import load_script

from npcrl.sim.profiles import builtin_profiles
from npcrl.train.data import TrainingTurn


def _bench(name: str) -> Any:
    return load_script(name.replace("/", "_").removesuffix(".py"), name)


def _turn(conversation: str, reward: float, rejected: int = 0) -> TrainingTurn:
    return TrainingTurn(
        conversation_id=conversation,
        turn_index=0,
        npc_id="blacksmith",
        bundle_id="b",
        prompt_ids=(1,),
        response_ids=(2, 3),
        behaviour_logprobs=(-0.1, -0.2),
        full_logprobs=(-0.1, -0.2),
        temperature=0.8,
        sampler={},
        reward=reward,
        rejected_sample=rejected,
    )


def test_a_lines_score_is_its_players_profile_without_noise() -> None:
    bench = _bench("bench/logged_ceiling.py")
    impatient = builtin_profiles()["impatient"]
    features = {"chatty": 1.0, "concise": 0.5, "offers_quest": 1.0}
    row = bench.FeatureRow("c1", 2, "blacksmith", "impatient", (1,), (), features, reward=-1.0)
    expected = impatient.bias + sum(impatient.weights.get(k, 0.0) * v for k, v in features.items())
    assert bench.noiseless_scores([row]) == {("c1", 2): pytest.approx(expected)}
    assert expected != pytest.approx(-1.0)  # the logged reward plays no part


def test_shown_training_turns_get_their_score_and_the_rest_keep_their_rewards() -> None:
    bench = _bench("bench/logged_ceiling.py")
    shown, rejected, held = _turn("c1", 0.3), _turn("c1", -1.0, rejected=1), _turn("c2", 0.7)
    data = SimpleNamespace(train=[shown, rejected], holdout=[held])
    load = bench.with_noiseless_rewards(lambda *a, **k: data, {("c1", 0): 1.25})
    loaded = load("logs")
    assert loaded.train == [dataclasses.replace(shown, reward=1.25), rejected]
    assert loaded.holdout == [held]  # the off-policy estimate reads the players' rewards
    missing = bench.with_noiseless_rewards(lambda *a, **k: SimpleNamespace(train=[shown], holdout=[]), {})
    with pytest.raises(SystemExit, match="c1#0"):
        missing("logs")


def test_within_takes_out_each_groups_mean() -> None:
    bench = _bench("bench/probe_denoise.py")
    out = bench.within(np.array([1.0, 3.0, 10.0, 20.0]), np.array(["a", "a", "b", "b"]))
    assert out.tolist() == [-1.0, 1.0, -5.0, 5.0]
