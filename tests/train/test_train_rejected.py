"""Training on the samples the agent rejected for contradicting the persona card: on a tiny Llama
whose logs hold a "contradiction" (one chosen token) only in rejected samples, the default logged
mode learns to say it less; without the rejected samples nothing in the data says it is bad."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest

torch = pytest.importorskip("torch")

from toy_logs import target_probability, target_rate, toy_config, write_rejection_logs  # noqa: E402

from npcrl.reward.spec import default_reward_spec  # noqa: E402
from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train.data import load_training_data  # noqa: E402
from npcrl.train.distributed import Dist  # noqa: E402
from npcrl.train.policy import build_policy, resolve_base_weights  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402


@pytest.fixture(scope="module")
def rejections(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rejections")
    bundle = tiny_bundles["llama-fp32"]
    forbidden = write_rejection_logs(bundle, root / "logs", 160, seed=0)
    # target_rate measures the share of fresh lines holding toy["target"]: here the rejected token
    return {"bundle": bundle, "logs": root / "logs", "target": forbidden}


class Rates(NamedTuple):
    """How often a policy says the rejected token: in sampled lines (``target_rate``) and as its
    exact probability over the logged lines (``target_probability``)."""

    sampled: float
    probability: float


def trained_rate(rejections: dict[str, Any], with_rejected: bool) -> tuple[Rates, Rates, Any]:
    """The rejected token's rates before (the reference) and after 9 iterations, and the data report."""
    torch.set_num_threads(1)
    config = toy_config("lora")
    bundle = load_bundle(rejections["bundle"])
    data = load_training_data(
        rejections["logs"],
        default_reward_spec(),
        {bundle.bundle_id},
        bundle.manifest.vocab_size,
        config.data,
        0,
        with_rejected=with_rejected,
    )
    policy = build_policy(resolve_base_weights(bundle, None), config.model, config.seed)
    trainer = PPOTrainer(policy, data.train, config, Dist(), policy.tokenizer.pad_token_id)
    base = Rates(target_rate(trainer, rejections, reference=True), target_probability(trainer, rejections, True))
    for _ in range(config.ppo.iterations):
        trainer.run_iteration()
    return base, Rates(target_rate(trainer, rejections), target_probability(trainer, rejections)), data.report


def test_rejected_samples_teach_the_policy_to_contradict_less(rejections: dict[str, Any]) -> None:
    base, after, report = trained_rate(rejections, with_rejected=True)
    assert report.train_rejected_samples > 10 and report.dropped["resampled"] == 0
    assert base.sampled > 0.05
    assert after.sampled < 0.5 * base.sampled, (base, after)  # measured: 0.137 -> 0.027
    assert after.probability < 0.5 * base.probability, (base, after)  # measured: 0.0088 -> 0.0032
    # the control: the same logs without their rejected samples hold no contradiction at all (the
    # resampled turns are dropped, the first samples shown agree with the "card"), so nothing moves
    # the token's probability down. Compared exactly, not sampled: on one CPU the sampled share moved
    # 0.137 -> 0.086 with the probability unchanged (on another it had not moved at all). Over data seeds 0-4
    # the rejected samples cut the probability 40-64%, and the control moved it -41% to +25%: the
    # toy's control holds for this seed, not for every one.
    base_again, control, control_report = trained_rate(rejections, with_rejected=False)
    assert base_again == base and control_report.train_rejected_samples == 0
    assert control_report.dropped["resampled"] > 0
    assert control.probability > 0.8 * base.probability, (base, control)  # measured: 0.0088 -> 0.0088


def test_npcrl_train_uses_them_in_the_logged_mode_unless_turned_off(rejections: dict[str, Any]) -> None:
    from npcrl.train.config import DataConfig
    from npcrl.train.run import _load_data

    bundle = load_bundle(rejections["bundle"])
    config = toy_config("lora")
    data, _ = _load_data(rejections["logs"], bundle, config)
    assert data.report.train_rejected_samples > 0
    config.data = DataConfig(holdout_fraction=0.2, penalize_card_contradictions=False)
    data, _ = _load_data(rejections["logs"], bundle, config)
    assert data.report.train_rejected_samples == 0 and data.report.dropped["resampled"] > 0
