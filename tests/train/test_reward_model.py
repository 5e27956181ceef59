"""The reward model (engagement predictor) and on-policy PPO with it, on a tiny Llama and real play
logs of the trainer's toy task (tests/toy_logs.py): the player engages when the NPC's line holds
one chosen token. 960 one-turn conversations: with the trainer's 240 the predictor memorises its
~20 rewarded training lines instead of learning to look for the token."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from config_helpers import train_config_error, write_train_config  # noqa: E402
from toy_logs import TOY_SPEC, target_rate, toy_config, write_toy_logs  # noqa: E402

from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.errors import TrainError  # noqa: E402
from npcrl.evaluation.metrics import word_tokens  # noqa: E402
from npcrl.reward.model_data import conversation_folds  # noqa: E402
from npcrl.reward.model_metrics import regression_metrics  # noqa: E402
from npcrl.reward.model_record import METRICS_FILE, RECORD_FILE, TENSORS_FILE  # noqa: E402
from npcrl.reward.ridge import ridge_fit  # noqa: E402
from npcrl.reward.spec import load_reward_spec  # noqa: E402
from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train import onpolicy  # noqa: E402
from npcrl.train.config import (  # noqa: E402
    DataConfig,
    ModelConfig,
    PPOConfig,
    RewardModelConfig,
    RunConfig,
    TrainConfig,
    load_train_config,
)
from npcrl.train.data import TrainingData, load_training_data  # noqa: E402
from npcrl.train.distributed import Dist  # noqa: E402
from npcrl.train.onpolicy import FreshRollouts, logged_lines  # noqa: E402
from npcrl.train.policy import build_policy, resolve_base_weights  # noqa: E402
from npcrl.train.ppo import PPOTrainer  # noqa: E402
from npcrl.train.reward_model import build_reward_model, load_reward_model  # noqa: E402
from npcrl.train.reward_model_scoring import score_logs  # noqa: E402
from npcrl.train.reward_model_train import evaluate, fit, pooled_features  # noqa: E402
from npcrl.train.shared_prefix import decoder_hidden  # noqa: E402
from npcrl.train.shown_tokens import SampleCutter  # noqa: E402

scoring_module = importlib.import_module("npcrl.train.reward_model_scoring")

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def toy(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rm-toy")
    bundle = tiny_bundles["llama-fp32"]
    target = write_toy_logs(bundle, root / "logs", 960, seed=0)
    spec = root / "toy-rewards.toml"
    spec.write_text(TOY_SPEC, encoding="utf-8")
    config = root / "rm.toml"
    config.write_text(
        "\n".join(
            [
                "seed = 0",
                "[data]",
                f"reward_spec = {json.dumps(str(spec))}",
                "holdout_fraction = 0.2",
                "[model]",
                "lora_r = 8",
                "[reward_model]",
                "epochs = 6",
                "micro_batch_turns = 8",  # whole batches; accumulation is checked on its own below
                "learning_rate = 3e-3",
                "engaged_threshold = 0.5",
                "[run]",
                "threads = 1",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return {"root": root, "bundle": bundle, "logs": root / "logs", "spec": spec, "target": target, "config": config}


def cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    # A hang guard only, far above the work (seconds when the machine is idle): a heavy job running
    # beside the tests must not turn a slow run into a failure.
    return subprocess.run(
        [sys.executable, "-m", "npcrl.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(toy: dict[str, Any]) -> dict[str, Any]:
    """A reward model trained through the command line, as a user would."""
    out = toy["root"] / "rm"
    proc = cli(
        "reward-model", "train", "--logs", str(toy["logs"]), "--bundle", str(toy["bundle"]), "--out", str(out),
        "--config", str(toy["config"]), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout}


def toy_data(toy: dict[str, Any], config: TrainConfig) -> TrainingData:
    bundle = load_bundle(toy["bundle"])
    spec = load_reward_spec(toy["spec"])
    return load_training_data(toy["logs"], spec, {bundle.bundle_id}, bundle.manifest.vocab_size, config.data, 0)


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_match_a_hand_computation() -> None:
    # p = t shuffled: deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5); sum of products 4, squares 5 and 5.
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], baseline=2.0, threshold=2.5)
    assert m["pearson"] == pytest.approx(0.8)
    assert m["spearman"] == pytest.approx(0.8)  # ranks are the values themselves
    assert m["mse"] == pytest.approx(0.5)  # errors 0, 1, 1, 0
    assert m["baseline_mse"] == pytest.approx(1.5)  # (2 - t)^2 = 1, 1, 0, 4
    assert m["mse_skill"] == pytest.approx(1 - 0.5 / 1.5)
    # engaged (t > 2.5): F T F T; predicted (p > 2.5): F F T T
    assert m["engaged_accuracy"] == pytest.approx(0.5)
    assert m["engaged_rate"] == pytest.approx(0.5) and m["majority_accuracy"] == pytest.approx(0.5)
    assert m["turns"] == 4


def test_spearman_averages_tied_ranks_and_differs_from_pearson() -> None:
    # p ranks (1.5, 1.5, 3, 4): deviations (-1, -1, .5, 1.5) against t's (-1.5, -.5, .5, 1.5):
    # 4.5 / sqrt(4.5 * 5). Pearson: p deviations (-2.5, -2.5, -1.5, 6.5): 14 / sqrt(57 * 5).
    m = regression_metrics([1.0, 1.0, 2.0, 10.0], [1.0, 2.0, 3.0, 4.0], baseline=0.0, threshold=0.0)
    assert m["spearman"] == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert m["pearson"] == pytest.approx(14 / (57 * 5) ** 0.5)
    assert m["engaged_accuracy"] == 1.0 and m["majority_accuracy"] == 1.0


def test_undefined_metrics_are_none_not_zero() -> None:
    m = regression_metrics([0.3, 0.3, 0.3], [1.0, 1.0, 1.0], baseline=1.0, threshold=0.5)
    assert m["pearson"] is None and m["spearman"] is None and m["mse_skill"] is None
    assert m["mse"] == pytest.approx(0.49)
    with pytest.raises(ValueError, match="equally long"):
        regression_metrics([1.0], [1.0, 2.0], baseline=0.0, threshold=0.0)


# -- learning -----------------------------------------------------------------------------------


def test_reward_model_learns_the_toy_signal_on_held_out_conversations(
    toy: dict[str, Any], trained: dict[str, Any]
) -> None:
    config = load_train_config(toy["config"])
    data = toy_data(toy, config)
    model, record = load_reward_model(trained["out"], load_bundle(toy["bundle"]))
    holdout = record["metrics"]["holdout"]
    # The split is the trainer's: the same held-out conversations, none of them trained on.
    assert holdout["turns"] == len(data.holdout) > 50
    assert {t.conversation_id for t in data.holdout}.isdisjoint({t.conversation_id for t in data.train})
    assert record["data"]["holdout_conversations"] == data.report.holdout_conversations
    # The recorded metrics are what the saved model predicts.
    recomputed = regression_metrics(
        model.predict(data.holdout), [t.reward for t in data.holdout], record["target_mean"], 0.5
    )
    assert recomputed == pytest.approx(holdout)
    assert holdout["pearson"] > 0.7 and holdout["spearman"] > 0.4
    assert holdout["mse"] < 0.5 * holdout["baseline_mse"]
    assert holdout["engaged_accuracy"] > holdout["majority_accuracy"]
    # Control: the same architecture untrained (head freshly initialised) predicts about the mean.
    base = resolve_base_weights(load_bundle(toy["bundle"]), None)
    untrained, _ = build_reward_model(
        base, config.reward_model, config.model, 0, record["target_mean"], record["target_std"]
    )
    control = evaluate(untrained, data, 0.5, 8)["holdout"]
    assert control["mse_skill"] < 0.1 < holdout["mse_skill"] - 0.4
    assert abs(control["pearson"]) < 0.4


def test_frozen_backbone_trains_and_saves_only_the_head(toy: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    config = load_train_config(toy["config"])
    data = toy_data(toy, config)
    base = resolve_base_weights(load_bundle(toy["bundle"]), None)
    model, _ = build_reward_model(base, RewardModelConfig(backbone="frozen", epochs=1), config.model, 0)
    assert set(model.trainable_tensors()) == {"head.weight", "head.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, data.train[:16], RewardModelConfig(backbone="frozen", epochs=1, learning_rate=1e-2), 0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"head.weight", "head.bias"}


def test_micro_batches_take_the_same_step_as_one_batch(toy: dict[str, Any]) -> None:
    """Gradient accumulation over micro-batches (bounded memory) is the whole batch's mean loss."""
    torch.set_num_threads(1)
    config = load_train_config(toy["config"])
    data = toy_data(toy, config)
    base = resolve_base_weights(load_bundle(toy["bundle"]), None)
    heads = []
    for micro in (8, 2):
        rm_config = RewardModelConfig(backbone="frozen", epochs=1, batch_turns=8, micro_batch_turns=micro)
        model, _ = build_reward_model(base, rm_config, config.model, 0)
        history = fit(model, data.train[:8], replace(rm_config, learning_rate=1e-2), 0)
        heads.append((model.head.weight.detach().clone(), history[0]["loss"]))
    torch.testing.assert_close(heads[0][0], heads[1][0], atol=1e-5, rtol=1e-4)
    assert heads[0][1] == pytest.approx(heads[1][1], rel=1e-4)


# -- frozen backbone, mean pooling, ridge head --------------------------------------------------------


def test_ridge_fit_solves_the_penalised_normal_equations() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.array([1.0, 10.0, 0.1, 1.0, 3.0, 1.0]) + 5.0
    y = x @ rng.normal(size=6) + rng.normal(size=40)
    xc, yc = x - x.mean(axis=0), y - y.mean()
    scale = float((np.linalg.svd(xc, compute_uv=False) ** 2).mean())
    for penalty, (weights, bias) in zip((1e-3, 1.0), ridge_fit(x, y, (1e-3, 1.0)), strict=True):
        expected = np.linalg.solve(xc.T @ xc + penalty * scale * np.eye(6), xc.T @ yc)
        np.testing.assert_allclose(weights, expected, rtol=1e-8, atol=1e-10)
        assert bias == pytest.approx(y.mean() - x.mean(axis=0) @ expected)
    # A tiny penalty is least squares: the residual is orthogonal to the (centred) features.
    weights, bias = ridge_fit(x, y, (1e-12,))[0]
    np.testing.assert_allclose(xc.T @ (x @ weights + bias - y), 0.0, atol=1e-6)


def test_conversation_folds_keep_each_conversation_on_one_side(toy: dict[str, Any]) -> None:
    turns = toy_data(toy, load_train_config(toy["config"])).train
    ids = [t.conversation_id for t in turns]
    folds = conversation_folds(ids, 5, seed=0)
    assert len(folds) == 5 and sum(int(f.sum()) for f in folds) == len(turns)
    assert all(0.1 * len(turns) < f.sum() < 0.3 * len(turns) for f in folds)
    for held in folds:
        inside = {t.conversation_id for t, h in zip(turns, held, strict=True) if h}
        outside = {t.conversation_id for t, h in zip(turns, held, strict=True) if not h}
        assert inside.isdisjoint(outside)
    assert [f.tolist() for f in conversation_folds(ids, 5, seed=0)] == [f.tolist() for f in folds]
    with pytest.raises(TrainError, match=">= 2 training conversations"):
        conversation_folds([c for c in ids if c == ids[0]], 5, seed=0)


def test_mean_pooling_averages_the_response_states_of_a_full_pass(toy: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    config = load_train_config(toy["config"])
    turns = toy_data(toy, config).train[:6]
    base = resolve_base_weights(load_bundle(toy["bundle"]), None)
    model, _ = build_reward_model(base, RewardModelConfig(backbone="frozen", pooling="mean"), config.model, 0)
    features = pooled_features(model, turns, batch=4)  # shared-prefix batches
    from npcrl.train.policy import decoder_of

    for row, turn in enumerate(turns):
        ids = torch.tensor([turn.prompt_ids + turn.response_ids])
        with torch.no_grad():
            hidden, _ = decoder_hidden(decoder_of(model.lm), ids, torch.ones_like(ids), limit=0, share_prefix=False)
        expected = hidden[0, len(turn.prompt_ids) :].mean(dim=0).double().numpy()
        np.testing.assert_allclose(features[row], expected, rtol=1e-4, atol=1e-5)


def test_ridge_head_on_a_frozen_backbone_learns_the_toy_signal(toy: dict[str, Any], tmp_path: Path) -> None:
    """Mean pooling + a closed-form ridge head: one forward pass, held-out skill, saved and reloaded exactly."""
    config = tmp_path / "ridge.toml"
    text = (
        toy["config"]
        .read_text(encoding="utf-8")
        .replace("[reward_model]", "[reward_model]\nbackbone = 'frozen'\npooling = 'mean'\nhead_fit = 'ridge'")
    )
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "rm"
    proc = cli(
        "reward-model", "train", "--logs", str(toy["logs"]), "--bundle", str(toy["bundle"]), "--out", str(out),
        "--config", str(config), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ridge penalty" in proc.stdout
    model, record = load_reward_model(out, load_bundle(toy["bundle"]))
    assert (record["backbone"], record["pooling"], record["head_fit"]) == ("frozen", "mean", "ridge")
    assert set(model.trainable_tensors()) == {"head.weight", "head.bias"}
    curve = record["history"]
    assert sum(point["chosen"] for point in curve) == 1
    chosen = next(point for point in curve if point["chosen"])
    # Cross-validated MSE in standardised units (1.0 = predicting the mean); the penalty is an interior optimum.
    assert chosen["cv_mse"] == min(point["cv_mse"] for point in curve) < 0.95
    assert curve[0]["cv_mse"] > chosen["cv_mse"] < curve[-1]["cv_mse"]
    holdout = record["metrics"]["holdout"]
    assert holdout["pearson"] > 0.45 and holdout["mse_skill"] > 0.2, holdout
    data = toy_data(toy, load_train_config(config))
    for split, turns in (("holdout", data.holdout), ("train", data.train)):
        # The train metrics reuse the fit's features; both splits are what the saved model predicts.
        recomputed = regression_metrics(model.predict(turns), [t.reward for t in turns], record["target_mean"], 0.5)
        assert recomputed == pytest.approx(record["metrics"][split], rel=1e-4, abs=1e-6), split


def test_cli_prints_and_writes_the_held_out_metrics(trained: dict[str, Any]) -> None:
    out = trained["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([METRICS_FILE, RECORD_FILE, TENSORS_FILE])
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics == json.loads((out / RECORD_FILE).read_text())["metrics"]
    table = trained["stdout"]
    assert "holdout" in table and "train" in table
    row = next(line for line in table.splitlines() if line.startswith("Pearson r"))
    assert row.split()[2] == f"{metrics['holdout']['pearson']:.3f}"
    assert "(engaged: reward > 0.5)" in table
    assert json.loads(table.strip().splitlines()[-1])["reward_model"] == str(out)


def test_save_and_load_round_trip(toy: dict[str, Any], trained: dict[str, Any], tmp_path: Path) -> None:
    model, record = load_reward_model(trained["out"])
    data = toy_data(toy, load_train_config(toy["config"]))
    first = model.predict(data.holdout[:12])
    # A copy elsewhere loads to the same predictions; nothing it loads is a pickle.
    copy = tmp_path / "copy"
    shutil.copytree(trained["out"], copy)
    again, _ = load_reward_model(copy)
    assert again.predict(data.holdout[:12]) == first
    assert not any(p.requires_grad for p in again.parameters())
    assert record["backbone"] == "lora" and any("lora" in k for k in again.trainable_tensors())
    # Predicting in batches or one by one gives the same scores (padding does not leak in).
    single = [model.predict([turn])[0] for turn in data.holdout[:12]]
    assert single == pytest.approx(first, abs=1e-5)


def _corrupt(case: str, root: Path) -> Path:
    """Break the reward model directory ``root`` in one way; returns the path to load."""
    tensors, record = root / TENSORS_FILE, root / RECORD_FILE
    if case == "missing":
        return root / "nope"
    if case == "file":
        return tensors
    if case == "no-record":
        record.unlink()
    elif case == "bad-json":
        record.write_text("{not json", encoding="utf-8")
    elif case == "other-format":
        record.write_text(json.dumps({"format": "something-else"}), encoding="utf-8")
    elif case == "pickle":
        torch.save({"head.weight": torch.zeros(1)}, tensors)
    elif case == "modified":
        raw = bytearray(tensors.read_bytes())
        raw[-1] ^= 0xFF
        tensors.write_bytes(bytes(raw))
    elif case == "other-tokenizer":
        data = json.loads(record.read_text())
        data["tokenizer_sha256"] = "0" * 64
        record.write_text(json.dumps(data), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("case", "message", "names"),
    [
        ("missing", "no such reward model directory", "nope"),
        ("file", "is a file", TENSORS_FILE),
        ("no-record", "missing", RECORD_FILE),
        ("bad-json", "cannot read JSON", RECORD_FILE),
        ("other-format", "not a reward model record", RECORD_FILE),
        ("pickle", "pickle", TENSORS_FILE),
        ("modified", "sha256 differs", TENSORS_FILE),
        ("other-tokenizer", "another tokenizer", RECORD_FILE),
    ],
    ids=["missing", "file", "no-record", "bad-json", "other-format", "pickle", "modified", "other-tokenizer"],
)
def test_bad_reward_model_paths_name_the_file(
    toy: dict[str, Any], trained: dict[str, Any], tmp_path: Path, case: str, message: str, names: str
) -> None:
    root = tmp_path / "rm"
    shutil.copytree(trained["out"], root)
    path = _corrupt(case, root)
    with pytest.raises(TrainError, match=message) as info:
        load_reward_model(path, load_bundle(toy["bundle"]))
    assert names in str(info.value) and str(tmp_path) in str(info.value)


def test_reward_model_train_refuses_bad_inputs(toy: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    base = ["reward-model", "train", "--bundle", str(toy["bundle"]), "--config", str(toy["config"])]
    proc = cli(*base, "--logs", str(empty), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and "no play-log files" in proc.stderr, proc.stderr
    proc = cli(*base, "--logs", str(toy["logs"]), "--out", str(taken))
    assert proc.returncode == 2 and f"{taken}: output directory is not empty" in proc.stderr, proc.stderr


def test_score_reads_every_conversation_with_the_training_rules(
    toy: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    """`reward-model score` on logs: the model's predictions of every usable turn (no holdout), the
    rewards of the spec it was trained with, and a per-turn file for further analysis."""
    predictions = tmp_path / "predictions.jsonl"
    proc = cli(
        "reward-model", "score", str(toy["logs"]), "--reward-model", str(trained["out"]),
        "--bundle", str(toy["bundle"]), "--predictions", str(predictions),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = summary["metrics"][str(toy["logs"])]

    model, record = load_reward_model(trained["out"], load_bundle(toy["bundle"]))
    config = load_train_config(toy["config"])
    every = toy_data(toy, replace(config, data=replace(config.data, holdout_fraction=0.0))).train
    expected = model.predict(every)
    assert metrics["turns"] == len(every) == 960
    assert metrics == pytest.approx(
        regression_metrics(expected, [t.reward for t in every], record["target_mean"], 0.5)
        | {"prediction_sd": float(np.std(expected))},
        rel=1e-4,
        abs=1e-6,
    )
    # The toy spec (rewards 0 or 1), not the default one, scored the turns.
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["conversation_id"], r["turn_index"]) for r in rows] == [(t.conversation_id, t.turn_index) for t in every]
    assert [r["reward"] for r in rows] == [t.reward for t in every] and {r["reward"] for r in rows} == {0.0, 1.0}
    assert [r["prediction"] for r in rows] == pytest.approx(expected, abs=1e-5)
    assert summary["predictions"] == str(predictions)
    table = proc.stdout
    assert str(toy["logs"]) in table.splitlines()[0] and "prediction sd" in table


def test_score_refuses_bundles_it_cannot_read_and_keeps_existing_files(
    toy: dict[str, Any],
    tiny_bundles: dict[str, Path],
    trained: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tiny families share one tokenizer file, so another tokenizer is simulated by its hash.
    other = load_bundle(tiny_bundles["gpt2-fp32"]).root
    real = scoring_module.tokenizer_sha256
    monkeypatch.setattr(scoring_module, "tokenizer_sha256", lambda b: "other" if b.root == other else real(b))
    with pytest.raises(TrainError, match=f"another tokenizer than bundle {other}"):
        score_logs(trained["out"], [toy["bundle"], other], [toy["logs"]])
    monkeypatch.undo()

    base = ["reward-model", "score", str(toy["logs"]), "--reward-model", str(trained["out"])]
    # Same tokenizer, but the q8 bundle did not write these logs: nothing to score, and it says why.
    proc = cli(*base, "--bundle", str(tiny_bundles["llama-q8"]))
    assert proc.returncode == 2 and "no usable training turns" in proc.stderr, proc.stderr
    taken = tmp_path / "taken.jsonl"
    taken.write_text("kept\n")
    proc = cli(*base, "--bundle", str(toy["bundle"]), "--predictions", str(taken))
    assert proc.returncode == 2 and f"{taken}: already exists" in proc.stderr, proc.stderr
    assert taken.read_text() == "kept\n"


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[data]\nmode = 'replay'\n", r"data.mode = 'replay': must be 'logged' or 'reward_model'"),
        ("[data]\nmode = 'reward_model'\n", r"reward_model.path = None: must be set when data.mode = 'reward_model'"),
        ("[reward_model]\nbackbone = 'half'\n", r"reward_model.backbone = 'half'"),
        ("[reward_model]\nepochs = 0\n", r"reward_model.epochs = 0: must be an integer >= 1"),
        ("[reward_model]\nmicro_batch_turns = 3\n", r"reward_model.micro_batch_turns = 3: must be a divisor"),
        ("[reward_model]\nlearning_rate = 0\n", r"reward_model.learning_rate = 0: must be > 0"),
        ("[reward_model]\nengaged_threshold = nan\n", r"reward_model.engaged_threshold = nan"),
        ("[reward_model]\nlr = 1e-4\n", r"reward_model: unknown key\(s\) lr"),
        ("[reward_model]\npath = 3\n", r"reward_model.path = 3: expected str"),
        ("[reward_model]\npooling = 'max'\n", r"reward_model.pooling = 'max': must be 'last' or 'mean'"),
        (
            "[reward_model]\nhead_fit = 'ridge'\n",
            r"reward_model.head_fit = 'ridge': must be 'adamw' with backbone 'lora'",
        ),
        ("[reward_model]\nridge_folds = 1\n", r"reward_model.ridge_folds = 1: must be an integer >= 2"),
        ("[reward_model]\nrepetition_penalty = -0.5\n", r"reward_model.repetition_penalty = -0.5: must be >= 0"),
    ],
    ids=[
        "mode",
        "mode-without-path",
        "backbone",
        "epochs",
        "micro-batch",
        "learning-rate",
        "threshold",
        "unknown",
        "path-type",
        "pooling",
        "ridge-needs-frozen",
        "folds",
        "repetition-penalty",
    ],
)
def test_reward_model_config_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    train_config_error(tmp_path, text, message)


def test_on_policy_mode_config_is_accepted(tmp_path: Path) -> None:
    config = load_train_config(
        write_train_config(
            tmp_path, "[data]\nmode = 'reward_model'\n[reward_model]\npath = 'rm'\nmax_new_tokens = 12\n"
        )
    )
    assert config.data.mode == "reward_model" and config.reward_model.path == "rm"
    assert config.reward_model.max_new_tokens == 12
    assert load_train_config(None).data.mode == "logged"


# -- on-policy PPO --------------------------------------------------------------------------------


def on_policy_trainer(
    toy: dict[str, Any], trained: dict[str, Any], iterations: int, repetition_penalty: float = 0.0
) -> PPOTrainer:
    torch.set_num_threads(1)
    # The toy task's PPO settings, scored by the trained reward model instead of the logged rewards.
    config = replace(
        toy_config("lora", iterations, kl_target=3.0, kl_horizon=200),
        data=DataConfig(holdout_fraction=0.2, mode="reward_model"),
        reward_model=RewardModelConfig(path=str(trained["out"]), repetition_penalty=repetition_penalty),
        run=RunConfig(threads=1),
    ).validate()
    bundle = load_bundle(toy["bundle"])
    data = toy_data(toy, config)
    policy = build_policy(resolve_base_weights(bundle, None), config.model, config.seed)
    reward_model, _ = load_reward_model(trained["out"], bundle)
    eos = bundle.manifest.special_tokens.eos_token_ids
    fresh = FreshRollouts(
        reward_model, eos, config, Dist(), logged_lines([*data.train, *data.holdout], policy.tokenizer)
    )
    return PPOTrainer(policy, data.train, config, Dist(), policy.tokenizer.pad_token_id, fresh=fresh)


def test_fresh_rollouts_are_the_policys_own_answers_scored_by_the_reward_model(
    toy: dict[str, Any], trained: dict[str, Any]
) -> None:
    trainer = on_policy_trainer(toy, trained, iterations=1)
    assert trainer.fresh is not None
    logged = trainer.rollout_turns(0)
    fresh = trainer.fresh.sample(trainer.policy, logged, 0)
    assert [t.prompt_ids for t in fresh] == [t.prompt_ids for t in logged]
    assert sum(f.response_ids != t.response_ids for f, t in zip(fresh, logged, strict=True)) > 0.9 * len(logged)
    predicted = trainer.fresh.reward_model.predict(fresh)
    assert [t.reward for t in fresh] == pytest.approx(predicted)
    # Same seed and iteration, same samples (what makes a resumed run sample what it would have).
    assert [t.response_ids for t in trainer.fresh.sample(trainer.policy, logged, 0)] == [t.response_ids for t in fresh]
    record = trainer.run_iteration()
    assert record["is_weight_mean"] == pytest.approx(1.0) and record["is_truncated_frac"] == 0.0
    assert record["behaviour_logprob_gap"] == 0.0 and record["sampling_s"] > 0
    assert record["reward_mean"] == pytest.approx(sum(t.reward for t in fresh) / len(fresh), abs=1e-5)
    assert record["reward_model_score_mean"] == pytest.approx(record["reward_mean"], abs=1e-5)  # no penalty
    assert 0.0 <= record["repeated_share_mean"] <= 1.0


def test_the_repetition_penalty_charges_a_line_for_what_the_npc_already_said(
    toy: dict[str, Any], trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = on_policy_trainer(toy, trained, iterations=1, repetition_penalty=0.5)
    assert trainer.fresh is not None
    rollouts, tokenizer = trainer.fresh, trainer.policy.tokenizer
    logged = trainer.rollout_turns(0)
    line = tokenizer.encode("Take the old road past the mill, friend.", add_special_tokens=False)
    # The toy conversations have one turn each: give half of them an earlier NPC line, this very one.
    said_it = {t.conversation_id for t in logged if int(t.conversation_id[-1]) % 2 == 0}
    rollouts.logged_lines = {cid: {-1: word_tokens(tokenizer.decode(line))} for cid in said_it}
    monkeypatch.setattr(onpolicy, "sample_responses", lambda d, h, prompts, *rest: [list(line) for _ in prompts])
    fresh = rollouts.sample(trainer.policy, logged, 0)
    scores = rollouts.reward_model.predict(fresh)
    shares = [1.0 if t.conversation_id in said_it else 0.0 for t in logged]
    assert 0 < sum(shares) < len(shares)  # both kinds of turn are in the rollout
    assert [t.reward for t in fresh] == pytest.approx([s - 0.5 * r for s, r in zip(scores, shares, strict=True)])
    assert rollouts.last_stats["repeated_share_mean"] == pytest.approx(sum(shares) / len(shares))
    assert rollouts.last_stats["reward_model_score_mean"] == pytest.approx(sum(scores) / len(scores))
    # An earlier line that shares 4 of the line's 6 word 3-grams ("take the old" ... "road past the").
    part = tokenizer.encode("Take the old road past the inn, then turn at the gate.", add_special_tokens=False)
    assert len(word_tokens(tokenizer.decode(line))) == 8
    rollouts.logged_lines = {t.conversation_id: {-1: word_tokens(tokenizer.decode(part))} for t in logged}
    fresh = rollouts.sample(trainer.policy, logged, 0)
    assert rollouts.last_stats["repeated_share_mean"] == pytest.approx(4 / 6)
    assert [t.reward for t in fresh] == pytest.approx([s - 0.5 * 4 / 6 for s in scores])


def test_a_fresh_line_that_contradicts_its_card_gets_the_contradiction_reward(
    toy: dict[str, Any], trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = on_policy_trainer(toy, trained, iterations=1)
    assert trainer.fresh is not None
    rollouts, tokenizer = trainer.fresh, trainer.policy.tokenizer
    brom = builtin_personas()["blacksmith"]
    line = tokenizer.encode("Aye. I am Grimbold, and this is my forge.", add_special_tokens=False)
    monkeypatch.setattr(onpolicy, "sample_responses", lambda d, h, prompts, *rest: [list(line) for _ in prompts])
    # half of the turns come from conversations with Brom's card, the rest from an unknown card
    logged = [
        replace(t, persona_hash=brom.persona_hash if k % 2 else "unknown")
        for k, t in enumerate(trainer.rollout_turns(0))
    ]
    rollouts.cards, rollouts.contradiction_reward = {brom.persona_hash: brom}, -0.75
    fresh = rollouts.sample(trainer.policy, logged, 0)
    scores = rollouts.reward_model.predict(fresh)
    expected = [-0.75 if k % 2 else score for k, score in enumerate(scores)]
    assert [t.reward for t in fresh] == pytest.approx(expected)
    assert rollouts.last_stats["card_contradiction_share"] == pytest.approx(
        sum(k % 2 for k in range(len(logged))) / len(logged)
    )
    # without cards (data.penalize_card_contradictions = false) the reward model alone scores
    rollouts.cards = {}
    assert [t.reward for t in rollouts.sample(trainer.policy, logged, 0)] == pytest.approx(scores)


def test_fresh_lines_are_cut_to_what_the_agent_would_show_before_they_are_scored(
    toy: dict[str, Any], trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = on_policy_trainer(toy, trained, iterations=1)
    assert trainer.fresh is not None
    rollouts, tokenizer = trainer.fresh, trainer.policy.tokenizer
    shown = "Take the old road past the mill, friend."
    line = tokenizer.encode(shown + " And when you reach the", add_special_tokens=False)  # an unfinished tail
    monkeypatch.setattr(onpolicy, "sample_responses", lambda d, h, prompts, *rest: [list(line) for _ in prompts])
    logged = trainer.rollout_turns(0)
    whole = rollouts.sample(trainer.policy, logged, 0)
    assert all(t.response_ids == tuple(line) for t in whole) and "shown_token_share" not in rollouts.last_stats

    def decode(ids: Any) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    rollouts.cutter = SampleCutter(decode, {})
    cut = rollouts.sample(trainer.policy, logged, 0)
    kept = cut[0].response_ids
    assert all(t.response_ids == kept for t in cut) and len(kept) < len(line)
    assert decode(kept).strip() == shown and tuple(line[: len(kept)]) == kept
    assert rollouts.last_stats["shown_token_share"] == pytest.approx(len(kept) / len(line))

    from npcrl.train.distributed import Dist

    class OtherRankKeptNothing(Dist):
        """A second process sampled 40 tokens and kept none: the share is over both ranks' rows."""

        def sum_all(self, values: list[float]) -> list[float]:
            return [values[0], values[1] + 40]

    rollouts.dist = OtherRankKeptNothing()
    rollouts.sample(trainer.policy, logged, 0)
    here = len(logged) * len(line)
    assert rollouts.last_stats["shown_token_share"] == pytest.approx(len(logged) * len(kept) / (here + 40))
    assert [t.reward for t in cut] == pytest.approx(rollouts.reward_model.predict(cut))  # the cut is scored


def test_on_policy_training_refuses_a_reward_model_that_learned_on_other_tokens(
    toy: dict[str, Any], trained: dict[str, Any]
) -> None:
    from npcrl.train.run import _load_scorer

    bundle = load_bundle(toy["bundle"])
    config = TrainConfig.from_dict(
        {"data": {"mode": "reward_model", "train_tokens": "shown"}, "reward_model": {"path": str(trained["out"])}}
    )
    with pytest.raises(TrainError, match="train_tokens = 'sampled'"):
        _load_scorer(config, bundle, None)
    same = TrainConfig.from_dict({"data": {"mode": "reward_model"}, "reward_model": {"path": str(trained["out"])}})
    assert _load_scorer(same, bundle, None) is not None


def test_on_policy_ppo_with_the_reward_model_raises_the_engagement_rate(
    toy: dict[str, Any], trained: dict[str, Any]
) -> None:
    trainer = on_policy_trainer(toy, trained, iterations=9)
    base_rate = target_rate(trainer, toy, reference=True, seed=4321)
    rates = []
    for _ in range(3):
        for _ in range(3):
            trainer.run_iteration()
        rates.append(target_rate(trainer, toy, seed=4321))
    assert base_rate < 0.25
    assert rates[0] < rates[2] and rates[-1] > 2.5 * base_rate, (base_rate, rates)
    scores = [m["reward_mean"] for m in trainer.metrics]  # the reward model's view of each fresh rollout
    assert sum(scores[-3:]) > sum(scores[:3]), scores
    kl = [m["kl_per_turn"] for m in trainer.metrics]
    beta = [m["kl_coef"] for m in trainer.metrics]
    # The adaptive controller (target 3 nats, horizon 200) follows the KL each iteration, lowering beta
    # below the target and raising it above; it moves beta by at most ~3% per rollout of 32 turns, so
    # KL overshoots the target here (7.5 nats on one CPU, under 7.5 on another): bounded, not on target.
    assert kl[0] == 0.0 and all(k >= 0 for k in kl) and kl[-1] < 4 * 3.0, kl
    assert [after > before for before, after in zip(beta[:-1], beta[1:], strict=True)] == [k > 3.0 for k in kl[:-1]], (
        kl,
        beta,
    )
    # The reference is untouched by training.
    assert target_rate(trainer, toy, reference=True, seed=4321) == base_rate


def test_npcrl_train_on_policy_mode_writes_its_report(
    toy: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "train.toml"
    settings = [
        "[data]",
        "mode = 'reward_model'",
        f"reward_spec = {json.dumps(str(toy['spec']))}",
        "holdout_fraction = 0.2",
        "[model]",
        "lora_r = 8",
        "[ppo]",
        "rollout_turns = 16",
        "minibatch_turns = 8",
        "iterations = 2",
        "learning_rate = 5e-3",
        "[reward_model]",
        f"path = {json.dumps(str(trained['out']))}",
        "[run]",
        "threads = 1",
        "export_quant = 'none'",
        "sample_prompts = 2",
        "sample_tokens = 8",
    ]
    text = "\n".join(settings) + "\n"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--logs", str(toy["logs"]), "--bundle", str(toy["bundle"]), "--out", str(out)]
    proc = cli(*args, "--config", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fresh samples scored by the reward model" in proc.stdout
    provenance = json.loads((out / "report" / "provenance.json").read_text())
    assert provenance["trainer"] == "npcrl on-policy PPO (reward model)"
    assert provenance["reward_model"]["role"] == "reward"
    samples = json.loads((out / "report" / "samples.json").read_text())
    assert all("reward_model_score" in s for s in samples["before"] + samples["after"])
    metrics = [json.loads(line) for line in (out / "report" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["is_weight_mean"] == pytest.approx(1.0) for m in metrics)
    assert "## Reward model" in (out / "report" / "report.md").read_text()
    assert json.loads((out / "run.json").read_text())["reward_model"]
    # A bad reward_model.path stops the run before any training, naming the path.
    config.write_text(text.replace(str(trained["out"]), str(tmp_path / "no-such-rm")), encoding="utf-8")
    proc = cli("train", *args[1:-1], str(tmp_path / "run2"), "--config", str(config), "--no-progress")
    assert proc.returncode == 2 and f"{tmp_path / 'no-such-rm'}: no such reward model directory" in proc.stderr


class TargetTokenScorer:
    """A scorer that is not a saved reward model: 1 for an answer holding the toy's rewarded token."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.calls = 0

    def predict_sequences(self, prompts: Any, responses: Any, batch: int = 8) -> list[float]:
        self.calls += 1
        return [float(self.target in response) for response in responses]


def test_train_takes_an_injected_scorer_in_place_of_reward_model_path(toy: dict[str, Any], tmp_path: Path) -> None:
    from npcrl.train.run import train

    config = TrainConfig(
        seed=0,
        data=DataConfig(holdout_fraction=0.2, mode="reward_model", reward_spec=str(toy["spec"])),
        model=ModelConfig(mode="lora", lora_r=8),
        ppo=PPOConfig(rollout_turns=16, minibatch_turns=8, micro_batch_turns=8, epochs=1, iterations=1),
        # Never read: the injected scorer replaces it.
        reward_model=RewardModelConfig(path=str(tmp_path / "no-such-rm")),
        run=RunConfig(threads=1, export_quant="none", sample_prompts=1, sample_tokens=4),
    ).validate()
    scorer = TargetTokenScorer(toy["target"])
    out = tmp_path / "run"
    train(toy["logs"], toy["bundle"], out, config, progress=False, scorer=(scorer, {"tensors_sha256": "abc"}))
    assert scorer.calls >= 1
    assert json.loads((out / "run.json").read_text())["reward_model"] == "abc"
    metrics = [json.loads(line) for line in (out / "report" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and 0.0 <= metrics[0]["reward_mean"] <= 1.0
    assert json.loads((out / "report" / "provenance.json").read_text())["reward_model"]["role"] == "reward"


def test_a_games_own_card_given_to_train_is_checked_on_policy(
    toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logs name a conversation's card by hash only: a game's own card is known to the on-policy
    check when ``train`` is given it (``npcrl train --personas``, the loop's personas), and a fresh
    line contradicting it is rewarded as a contradiction."""
    from transformers import AutoTokenizer

    import npcrl.train.run as run
    from npcrl.agent.persona import load_persona

    card = tmp_path / "hilda.toml"  # a smith of the game's own, not a shipped card
    shipped = Path(run.__file__).parents[1] / "data" / "personas" / "blacksmith.toml"
    card.write_text(shipped.read_text(encoding="utf-8").replace("Brom", "Hilda"), encoding="utf-8")
    hilda = load_persona(card)
    assert hilda.persona_hash not in {p.persona_hash for p in builtin_personas().values()}
    real_load_data = run._load_data

    def logs_of_hildas_conversations(*args: Any) -> Any:
        data, lineage = real_load_data(*args)
        data.train = [replace(t, persona_hash=hilda.persona_hash) for t in data.train]
        return data, lineage

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_weights(load_bundle(toy["bundle"]), None)))
    line = tokenizer.encode("Aye. I am Grimbold, and this is my forge.", add_special_tokens=False)
    monkeypatch.setattr(run, "_load_data", logs_of_hildas_conversations)
    monkeypatch.setattr(onpolicy, "sample_responses", lambda d, h, prompts, *rest: [list(line) for _ in prompts])
    config = TrainConfig(
        seed=0,
        data=DataConfig(holdout_fraction=0.2, mode="reward_model", reward_spec=str(toy["spec"])),
        model=ModelConfig(mode="lora", lora_r=8),
        ppo=PPOConfig(rollout_turns=8, minibatch_turns=8, micro_batch_turns=8, epochs=1, iterations=1),
        reward_model=RewardModelConfig(path=str(tmp_path / "no-such-rm"), max_new_tokens=4),  # never read
        run=RunConfig(threads=1, export_quant="none", sample_prompts=0),
    ).validate()
    shares = {}
    for name, personas in (("shipped cards only", ()), ("with the game's card", (hilda,))):
        out = tmp_path / name.replace(" ", "-")
        scorer = (TargetTokenScorer(toy["target"]), {"tensors_sha256": "abc"})
        run.train(toy["logs"], toy["bundle"], out, config, progress=False, scorer=scorer, personas=personas)
        metrics = json.loads((out / "report" / "metrics.jsonl").read_text().splitlines()[0])
        shares[name] = metrics["card_contradiction_share"]
        recorded = json.loads((out / "run.json").read_text())["persona_cards"]
        assert (hilda.persona_hash in recorded) == bool(personas)
    assert shares == {"shipped cards only": 0.0, "with the game's card": 1.0}
