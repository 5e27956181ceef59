"""``data.reward_baseline``: each player's own reward level taken out of their training turns, so an
eager player's lines and a reluctant player's lines are each judged against that player."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from toy_logs import toy_inputs

from npcrl.errors import TrainConfigError
from npcrl.train.config import TrainConfig, load_train_config
from npcrl.train.data import TrainingTurn
from npcrl.train.reward_baseline import apply_reward_baseline


def training_turn(player: str, reward: float, cid: str = "c", index: int = 0, rejected: int = 0) -> TrainingTurn:
    return TrainingTurn(
        conversation_id=cid,
        turn_index=index,
        npc_id="brom",
        bundle_id="b1",
        prompt_ids=(1, 2),
        response_ids=(3,),
        behaviour_logprobs=(-0.5,),
        full_logprobs=(-0.5,),
        temperature=0.7,
        sampler={"temperature": 0.7},
        reward=reward,
        player_id=player,
        rejected_sample=rejected,
    )


def eager_and_reluctant() -> list[TrainingTurn]:
    """An eager player who gives every line 2 or 3 and a reluctant one who gives 0 or 1: the better
    line earns one more with each."""
    rewards = {"eager": [2.0, 3.0, 2.0, 3.0], "reluctant": [0.0, 1.0, 0.0, 1.0]}
    return [
        training_turn(p, r, cid=f"{p}-{i // 2}", index=i % 2) for p, rs in rewards.items() for i, r in enumerate(rs)
    ]


def test_player_baseline_judges_each_line_against_its_own_player() -> None:
    turns = eager_and_reluctant()
    out, summary = apply_reward_baseline(turns, "player", prior_turns=1.0)
    by_player: dict[str, list[float]] = {}
    for t in out:
        by_player.setdefault(t.player_id, []).append(t.reward)
    # Without the baseline every eager line (2, 3) beats every reluctant line (0, 1). With it the
    # reluctant player's better line outranks the eager player's worse one.
    assert max(by_player["reluctant"]) > min(by_player["eager"])
    # Exactly: b = (S - r + k*m) / (n - 1 + k), reward r - b + m; m = 1.5, k = 1, n = 4.
    m = 1.5
    for before, after in zip(turns, out, strict=True):
        same = [t.reward for t in turns if t.player_id == before.player_id]
        baseline = (sum(same) - before.reward + m) / (len(same) - 1 + 1)
        assert after.reward == pytest.approx(before.reward - baseline + m)
        assert dataclasses.replace(after, reward=before.reward) == before  # nothing else changes
    assert summary.group == "player" and summary.groups == 2 and summary.ungrouped_turns == 0
    assert summary.shared_mean == pytest.approx(m)
    assert summary.group_mean_spread == pytest.approx(abs((10 + m) / 5 - (2 + m) / 5) / 2)


def test_a_line_does_not_set_its_own_baseline() -> None:
    # Leave-one-out: raising a line's reward never lowers the baseline it is judged against, so
    # the baseline carries no information about the line itself (it would bias the gradient).
    turns = eager_and_reluctant()
    base, _ = apply_reward_baseline(turns, "player", prior_turns=2.0)
    raised = [dataclasses.replace(turns[0], reward=turns[0].reward + 5.0), *turns[1:]]
    out, _ = apply_reward_baseline(raised, "player", prior_turns=2.0)
    shared_shift = 5.0 / len(turns)  # m moves with the raised reward
    own_baseline = turns[0].reward - base[0].reward
    raised_baseline = raised[0].reward - out[0].reward
    assert raised_baseline == pytest.approx(own_baseline - shared_shift + 2.0 * shared_shift / (3 + 2.0))


def test_players_with_few_turns_keep_most_of_the_shared_level() -> None:
    lone = training_turn("once", 0.0, cid="lone")
    turns = [*eager_and_reluctant(), lone]
    out, _ = apply_reward_baseline(turns, "player", prior_turns=8.0)
    # No other turn of this player: the baseline is the shared mean, so the reward is unchanged.
    assert out[-1].reward == pytest.approx(0.0)
    strong, _ = apply_reward_baseline(turns, "player", prior_turns=0.01)
    weak, _ = apply_reward_baseline(turns, "player", prior_turns=100.0)
    gap = [abs(a.reward - t.reward) for a, t in zip(strong, turns, strict=True)]
    small_gap = [abs(a.reward - t.reward) for a, t in zip(weak, turns, strict=True)]
    assert sum(small_gap) < 0.1 * sum(gap)


def test_rejected_samples_and_unknown_players() -> None:
    turns = eager_and_reluctant()
    rejected = training_turn("reluctant", -1.0, cid="reluctant-0", rejected=1)
    unknown = training_turn("", 7.0, cid="no-start")
    out, summary = apply_reward_baseline([*turns, rejected, unknown], "player", prior_turns=1.0)
    shown, _ = apply_reward_baseline([*turns, unknown], "player", prior_turns=1.0)
    # A rejected sample is not engagement: the shown turns' rewards are as if it were not there.
    assert [t.reward for t in out[: len(turns)]] == pytest.approx([t.reward for t in shown[: len(turns)]])
    # It is judged against its player's whole mean: 4 shown turns summing to 2, shrunk by 1 turn of m.
    m = (sum(t.reward for t in turns) + 7.0) / (len(turns) + 1)
    assert out[len(turns)].reward == pytest.approx(-1.0 - (2.0 + m) / (4 + 1) + m)
    assert out[-1].reward == 7.0 and summary.ungrouped_turns == 1


def test_conversation_baseline_and_none() -> None:
    turns = eager_and_reluctant()
    out, summary = apply_reward_baseline(turns, "conversation", prior_turns=1e-6)
    assert summary.groups == 4
    # Each conversation holds one worse and one better line: they are now m -+ 1 whatever the player.
    assert [round(t.reward, 3) for t in out] == [0.5, 2.5] * 4
    same, none = apply_reward_baseline(turns, "none", prior_turns=8.0)
    assert same == turns and none.groups == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"reward_baseline": "profile"}, "data.reward_baseline = 'profile'"),
        ({"reward_baseline": "player", "mode": "reward_model"}, "'none' in reward_model mode"),
        ({"baseline_prior_turns": 0}, "data.baseline_prior_turns = 0"),
    ],
)
def test_config_refuses_a_baseline_it_cannot_apply(data: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_dict({"data": data, "reward_model": {"path": "rm"}})


def test_the_logged_run_trains_on_baselined_rewards_and_reports_them(
    tiny_bundles: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from npcrl.runtime.bundle import load_bundle
    from npcrl.train.run import _load_data

    toy = toy_inputs(tiny_bundles["llama-fp32"], tmp_path, conversations=40)
    bundle = load_bundle(toy["bundle"])

    def loaded(baseline: str) -> Any:
        config = TrainConfig.from_dict(
            {"data": {"reward_spec": str(toy["spec"]), "reward_baseline": baseline, "baseline_prior_turns": 1.0}}
        )
        return _load_data(toy["logs"], bundle, config)[0]

    plain, baselined = loaded("none"), loaded("player")
    # One player (every toy conversation is "tester"): each line is judged against the others' mean.
    assert baselined.report.reward_baseline["groups"] == 1
    assert [t.reward for t in baselined.train] != [t.reward for t in plain.train]
    assert [t.reward for t in baselined.holdout] == [t.reward for t in plain.holdout]  # engagement as logged
    assert baselined.report.train_reward_mean == plain.report.train_reward_mean
    assert plain.report.reward_baseline["group"] == "none"


def test_the_player_baseline_config_is_the_defaults_with_the_baseline() -> None:
    """docs/train.player-baseline.toml (measured in docs/RESULTS.md) changes one setting of the
    defaults it was measured beside (docs/train.kl-stop.toml, with the fixed penalty)."""
    root = Path(__file__).resolve().parents[2]
    config = load_train_config(root / "docs" / "train.player-baseline.toml")
    kl_stop = load_train_config(root / "docs" / "train.kl-stop.toml")
    assert config == dataclasses.replace(kl_stop, data=dataclasses.replace(kl_stop.data, reward_baseline="player"))


def test_the_lambda_one_config_adds_only_lambda() -> None:
    """docs/train.player-baseline-lam1.toml (measured in docs/RESULTS.md) is the baseline config with lam = 1."""
    root = Path(__file__).resolve().parents[2]
    config = load_train_config(root / "docs" / "train.player-baseline-lam1.toml")
    baseline = load_train_config(root / "docs" / "train.player-baseline.toml")
    assert config == dataclasses.replace(baseline, ppo=dataclasses.replace(baseline.ppo, lam=1.0)).validate()
