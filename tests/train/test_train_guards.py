"""The trainer refuses non-finite numbers: a NaN or infinite reward, loss, gradient or parameter
stops the run before anything is written, and a good checkpoint or bundle already on disk is never
replaced by a bad one. The bad values are injected below the config and play-log layers (in the
trainer's turns, its loss, its gradients or its weights), since those layers refuse them first."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from toy_logs import TOY_SPEC, write_toy_logs  # noqa: E402

from npcrl.durable import restore_set_aside, set_aside_path  # noqa: E402
from npcrl.errors import TrainError  # noqa: E402
from npcrl.reward.spec import load_reward_spec  # noqa: E402
from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train import checkpoint as ckpt  # noqa: E402
from npcrl.train.config import DataConfig, ModelConfig, PPOConfig, RewardModelConfig, RunConfig, TrainConfig  # noqa: E402
from npcrl.train.data import TrainingTurn, load_training_data  # noqa: E402
from npcrl.train.distributed import Dist  # noqa: E402
from npcrl.train.policy import build_policy, resolve_base_weights  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402
from npcrl.train.run import train  # noqa: E402


@pytest.fixture(scope="module")
def toy(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fp32 bundle of the tiny Llama (not the four of ``tiny_bundles``) and 48 toy turns."""
    from exporters.export import export_bundle

    root = tmp_path_factory.mktemp("guards")
    bundle = export_bundle(tiny_model_dirs["llama"], root / "bundle", quant="fp32").root
    write_toy_logs(bundle, root / "logs", 48, seed=0)
    spec = root / "toy-rewards.toml"
    spec.write_text(TOY_SPEC, encoding="utf-8")
    return {"root": root, "bundle": bundle, "logs": root / "logs", "spec": spec, "base": tiny_model_dirs["llama"]}


def guard_config(iterations: int = 1, export: str = "none", mode: str = "lora") -> TrainConfig:
    return TrainConfig(
        seed=0,
        data=DataConfig(holdout_fraction=0.2),
        model=ModelConfig(mode=mode, lora_r=4),
        ppo=PPOConfig(
            rollout_turns=16,
            minibatch_turns=8,
            micro_batch_turns=8,
            epochs=1,
            iterations=iterations,
            learning_rate=1e-3,
        ),
        run=RunConfig(threads=1, export_quant=export, sample_prompts=0, keep_checkpoints=1),
    ).validate()


def make_trainer(toy: dict[str, Any], config: TrainConfig) -> PPOTrainer:
    torch.set_num_threads(1)
    bundle = load_bundle(toy["bundle"])
    data = load_training_data(
        toy["logs"], load_reward_spec(toy["spec"]), {bundle.bundle_id}, bundle.manifest.vocab_size, config.data, 0
    )
    policy = build_policy(resolve_base_weights(bundle, None), config.model, config.seed)
    return PPOTrainer(policy, data.train, config, Dist(), policy.tokenizer.pad_token_id)


def run_train(toy: dict[str, Any], out: Path, config: TrainConfig, resume: bool = False) -> Any:
    return train(toy["logs"], toy["bundle"], out, config, resume=resume, progress=False)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path: what "byte-identical" is checked against."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def poison_rewards(monkeypatch: pytest.MonkeyPatch, value: float, from_iteration: int = 0) -> None:
    """From ``from_iteration`` on, the first turn of every rollout has reward ``value``."""
    original: Callable[[PPOTrainer, int], list[TrainingTurn]] = PPOTrainer.rollout_turns

    def rollout_turns(self: PPOTrainer, iteration: int) -> list[TrainingTurn]:
        turns = original(self, iteration)
        if iteration < from_iteration:
            return turns
        return [dataclasses.replace(turns[0], reward=value), *turns[1:]]

    monkeypatch.setattr(PPOTrainer, "rollout_turns", rollout_turns)


def trainable_copy(trainer: PPOTrainer) -> dict[str, Any]:
    return {name: param.detach().clone() for name, param in trainer.policy.trainable_parameters()}


def assert_unchanged(trainer: PPOTrainer, before: dict[str, Any]) -> None:
    for name, param in trainer.policy.trainable_parameters():
        assert torch.equal(param, before[name]), name


# -- rewards ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_a_nonfinite_reward_stops_the_run_before_anything_is_written(
    toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    poison_rewards(monkeypatch, bad)
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=r"iteration 1: the reward of 1 turn\(s\) is not finite: toy-0-\d+#0 = "):
        run_train(toy, out, guard_config(iterations=2, export="fp32"))
    assert ckpt.list_checkpoints(out / "state") == []
    assert not (out / "checkpoint").exists() and not (out / "bundle").exists()
    assert not (out / "report" / "metrics.jsonl").exists()


def test_a_failed_extension_leaves_the_finished_checkpoint_and_bundle_byte_identical(
    toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    run_train(toy, out, guard_config(iterations=1, export="fp32"))
    before = {name: tree_digest(out / name) for name in ("checkpoint", "bundle", "state")}
    assert before["bundle"] and before["checkpoint"] and before["state"]
    poison_rewards(monkeypatch, float("nan"), from_iteration=1)  # the extension's iterations only
    with pytest.raises(TrainError, match="iteration 2: the reward"):
        run_train(toy, out, guard_config(iterations=3, export="fp32"), resume=True)
    assert {name: tree_digest(out / name) for name in before} == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_run_that_failed_in_its_export_resumes_to_finish_it(
    toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final checkpoint is written before the export: a run whose export failed is not
    "already finished" but finished by a resume, from its last checkpoint, training nothing again."""
    import npcrl.train.finish

    def failed_export(*args: Any, **kwargs: Any) -> Any:
        raise TrainError("the export failed")

    real_export = npcrl.train.finish.export
    monkeypatch.setattr(npcrl.train.finish, "export", failed_export)
    out = tmp_path / "run"
    with pytest.raises(TrainError, match="the export failed"):
        run_train(toy, out, guard_config(iterations=2, export="fp32"))
    assert (out / "checkpoint").is_dir() and not (out / "bundle").exists()
    trained = tree_digest(out / "checkpoint")
    monkeypatch.setattr(npcrl.train.finish, "export", real_export)
    result = run_train(toy, out, guard_config(iterations=2, export="fp32"), resume=True)
    assert result is not None and result.bundle is not None and (result.bundle / "manifest.json").is_file()
    assert tree_digest(out / "checkpoint") == trained  # the same weights: nothing trained again
    assert json.loads((out / "run.json").read_text())["finished_iterations"] == 2
    with pytest.raises(TrainError, match="already finished"):
        run_train(toy, out, guard_config(iterations=2, export="fp32"), resume=True)


# -- the update ------------------------------------------------------------------------------------


def test_a_nan_loss_skips_the_step_and_leaves_the_weights_unchanged(
    toy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import npcrl.train.ppo as ppo_module

    trainer = make_trainer(toy, guard_config())
    before = trainable_copy(trainer)
    original = ppo_module.clipped_policy_loss

    def nan_loss(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        loss, clipped = original(*args, **kwargs)
        return loss * float("nan"), clipped

    monkeypatch.setattr(ppo_module, "clipped_policy_loss", nan_loss)
    with pytest.raises(TrainError, match=r"iteration 1, epoch 1, minibatch 1: policy loss = nan.*step was skipped"):
        trainer.run_iteration()
    assert_unchanged(trainer, before)
    assert trainer.updates == 0 and trainer.iteration == 0 and trainer.metrics == []
    assert trainer.optimizer.state_dict()["state"] == {}  # AdamW's moments were never touched


def test_a_nan_gradient_is_not_applied(toy: dict[str, Any]) -> None:
    trainer = make_trainer(toy, guard_config(mode="full"))
    before = trainable_copy(trainer)
    head = trainer.policy.module.value_head.weight
    head.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.raises(
        TrainError, match=r"minibatch 1: gradient norm = nan is not finite; the optimizer step was skipped"
    ):
        trainer.run_iteration()
    assert_unchanged(trainer, before)
    assert all(p.grad is None for _, p in trainer.policy.trainable_parameters())


def test_a_parameter_poisoned_by_an_update_stops_the_iteration(
    toy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(toy, guard_config())
    original = trainer.update

    def update_then_poison(rollout: Any) -> dict[str, float]:
        stats = original(rollout)
        with torch.no_grad():
            trainer.policy.module.value_head.bias.fill_(float("inf"))
        return stats

    monkeypatch.setattr(trainer, "update", update_then_poison)
    with pytest.raises(TrainError, match=r"iteration 1: parameters after the update not finite: value_head.bias"):
        trainer.run_iteration()
    assert trainer.metrics == []


# -- what is written -------------------------------------------------------------------------------


def test_a_checkpoint_with_a_nan_parameter_is_refused_and_the_last_good_one_kept(
    toy: dict[str, Any], tmp_path: Path
) -> None:
    trainer = make_trainer(toy, guard_config())
    trainer.run_iteration()
    state_dir = tmp_path / "state"
    good = ckpt.save_checkpoint(state_dir, 1, trainer.trainable_state(), trainer.optimizer, trainer.loop_state(), 1)
    digest = tree_digest(good)
    name, param = trainer.policy.trainable_parameters()[0]
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    # keep = 1: writing the bad one would have deleted the good one.
    with pytest.raises(TrainError, match=rf"ckpt-000002: not written: trainable parameters not finite: {name}: 1 NaN"):
        ckpt.save_checkpoint(state_dir, 2, trainer.trainable_state(), trainer.optimizer, trainer.loop_state(), 1)
    assert ckpt.list_checkpoints(state_dir) == [good] and tree_digest(good) == digest
    assert [p.name for p in state_dir.iterdir()] == [good.name]  # no staging directory left behind


def test_the_final_checkpoint_refuses_a_nan_parameter_and_keeps_the_good_one(
    toy: dict[str, Any], tmp_path: Path
) -> None:
    trainer = make_trainer(toy, guard_config(mode="full"))
    final = tmp_path / "checkpoint"
    ckpt.write_final_checkpoint(trainer.policy, final)
    digest = tree_digest(final)
    with torch.no_grad():
        trainer.policy.module.value_head.weight.view(-1)[3] = float("-inf")
    with pytest.raises(TrainError, match=r"checkpoint: not written: parameters not finite: value_head.weight"):
        ckpt.write_final_checkpoint(trainer.policy, final)
    assert tree_digest(final) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_parameter_poisoned_before_the_final_save_writes_nothing(
    toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PPOTrainer.run_iteration

    def run_then_poison(self: PPOTrainer) -> dict[str, Any]:
        record = original(self)
        if self.iteration == self.total_iterations:
            with torch.no_grad():
                self.policy.module.value_head.bias.fill_(float("nan"))
        return record

    monkeypatch.setattr(PPOTrainer, "run_iteration", run_then_poison)
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=r"not written: trainable parameters not finite: value_head.bias"):
        run_train(toy, out, guard_config(iterations=2, export="fp32"))
    assert [p.name for p in ckpt.list_checkpoints(out / "state")] == ["ckpt-000001"]
    assert not (out / "checkpoint").exists() and not (out / "bundle").exists()


def test_a_run_killed_while_swapping_the_final_checkpoint_gets_the_old_one_back(tmp_path: Path) -> None:
    retired = set_aside_path(tmp_path / "checkpoint")
    retired.mkdir()
    (retired / "model.safetensors").write_bytes(b"good weights")
    assert restore_set_aside(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == b"good weights"
    assert not retired.exists()


# -- the reward model ------------------------------------------------------------------------------


class NanScorer:
    def predict_sequences(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], batch: int = 8
    ) -> list[float]:
        return [float("nan") if i == 1 else 0.5 for i in range(len(prompts))]


def test_a_nonfinite_reward_model_prediction_never_becomes_a_reward(toy: dict[str, Any]) -> None:
    from npcrl.train.onpolicy import FreshRollouts

    config = dataclasses.replace(guard_config(), reward_model=RewardModelConfig(max_new_tokens=2))
    trainer = make_trainer(toy, config)
    fresh = FreshRollouts(NanScorer(), [trainer.pad_id], config, Dist())
    turns = trainer.rollout_turns(0)[:3]
    with pytest.raises(
        TrainError, match=rf"iteration 1: the predicted reward of 1 turn\(s\) is not finite: {turns[1].key}"
    ):
        fresh.sample(trainer.policy, turns, 0)


def test_a_reward_model_with_a_nan_weight_is_not_saved(toy: dict[str, Any], tmp_path: Path) -> None:
    from npcrl.train.reward_model import build_reward_model, save_reward_model

    model, _ = build_reward_model(toy["base"], RewardModelConfig(), ModelConfig(), 0)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    out = tmp_path / "reward-model"
    with pytest.raises(TrainError, match=r"reward-model: not written: reward model tensors not finite: head.bias"):
        save_reward_model(model, {"metrics": {}}, out)
    assert list(tmp_path.iterdir()) == []


def test_reward_model_training_refuses_nonfinite_rewards(
    toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import npcrl.train.reward_model_train as reward_model

    original = reward_model.load_training_data

    def with_an_infinite_reward(*args: Any, **kwargs: Any) -> Any:
        data = original(*args, **kwargs)
        data.train[2] = dataclasses.replace(data.train[2], reward=float("inf"))
        return data

    monkeypatch.setattr(reward_model, "load_training_data", with_an_infinite_reward)
    out = tmp_path / "reward-model"
    with pytest.raises(TrainError, match=r"the reward of 1 turn\(s\) is not finite: toy-0-\d+#0 = inf"):
        reward_model.train_reward_model(toy["logs"], toy["bundle"], out, guard_config(), progress=False)
    assert not out.exists()
