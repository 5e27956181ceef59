"""``model.precision = "bf16"``: the transformer body runs in bfloat16 under CPU autocast, the
log-prob arithmetic stays float32, and the toy reward is still learned."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from toy_logs import target_rate, toy_config  # noqa: E402

from npcrl.errors import TrainConfigError  # noqa: E402
from tests.train.test_train import make_trainer, toy  # noqa: E402,F401  (its toy logs fixture)


def bf16(config: Any) -> Any:
    return replace(config, model=replace(config.model, precision="bf16")).validate()


def test_bf16_runs_the_body_in_bfloat16_and_keeps_float32_log_probs(toy: dict[str, Any]) -> None:  # noqa: F811
    exact = make_trainer(toy, toy_config("lora", iterations=1))
    fast = make_trainer(toy, bf16(toy_config("lora", iterations=1)))
    turns = exact.rollout_turns(0)
    a, b = exact.score(turns), fast.score(turns)
    assert a.old_logprobs.dtype == b.old_logprobs.dtype == torch.float32
    mask = a.batch.mask.bool()
    gap = (a.old_logprobs - b.old_logprobs)[mask].abs()
    assert float(gap.max()) > 0.0  # another precision really ran
    assert float(gap.mean()) < 0.05, float(gap.mean())  # and only rounding moved the log-probs
    # before the first update the policy is the reference in both: its ratio and KL start exact
    assert torch.equal(b.ref_logprobs, b.old_logprobs) and float(b.kl.abs().max()) == 0.0


def test_the_toy_reward_is_learned_in_bf16(toy: dict[str, Any]) -> None:  # noqa: F811
    trainer = make_trainer(toy, bf16(toy_config("lora", kl_target=3.0, kl_horizon=200)))
    base_rate = target_rate(trainer, toy, reference=True)
    for _ in range(9):
        trainer.run_iteration()
    assert target_rate(trainer, toy) > 2.5 * base_rate
    assert all(torch.isfinite(p).all() for _, p in trainer.policy.trainable_parameters())
    assert all(p.dtype == torch.float32 for _, p in trainer.policy.trainable_parameters())


def test_an_unknown_precision_is_refused_naming_the_field(tmp_path: Path) -> None:
    from npcrl.train.config import load_train_config

    path = tmp_path / "train.toml"
    path.write_text('[model]\nprecision = "fp16"\n', encoding="utf-8")
    with pytest.raises(TrainConfigError, match="model.precision"):
        load_train_config(path)
