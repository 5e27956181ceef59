"""Fit a reward model to the rewards of logged turns and judge it on held-out conversations.

The model is trained by regression (MSE) on the per-turn reward the trainer computes from the logs
(``npcrl.reward.engagement`` + the reward spec), with the trainer's conversation-level
train/holdout split, and judged on the held-out conversations.

Two ways to fit it: AdamW steps on the head and the trainable backbone (LoRA, full, or head
only), or, on a frozen backbone, ridge regression in closed form (``head_fit = "ridge"``): one
forward pass gives every turn's features, and the penalty is chosen by cross-validation over the
training conversations. With a few hundred logged turns the second is the one that generalises:
LoRA regression on 230 real turns fitted noise (held-out r < 0, docs/RESULTS.md).

Held-out metrics (``npcrl.reward.model_metrics.regression_metrics``): Pearson and Spearman
correlation, MSE against the baseline that predicts the training mean for every turn, and the
accuracy of "engaged" (reward > ``reward_model.engaged_threshold``) next to the majority-class
accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npcrl.errors import TrainError
from npcrl.reward.model_data import conversation_folds, standardised, target_scaling
from npcrl.reward.model_metrics import regression_metrics
from npcrl.reward.model_record import FORMAT, FORMAT_VERSION, base_weights_sha256
from npcrl.reward.ridge import RIDGE_PENALTIES, ridge_fit, select_ridge_penalty
from npcrl.reward.spec import default_reward_spec, load_reward_spec
from npcrl.runtime.bundle import Bundle, load_bundle
from npcrl.train.batching import collate
from npcrl.train.config import RewardModelConfig, TrainConfig
from npcrl.train.data import (
    TrainingData,
    TrainingTurn,
    accepted_bundle_ids,
    load_training_data,
    log_directories,
    tokenizer_sha256,
)
from npcrl.train.finite import require_finite_numbers, require_finite_rewards, require_finite_tensors
from npcrl.train.policy import resolve_base_weights
from npcrl.train.reward_model import RewardModel, build_reward_model, response_starts, save_reward_model
from npcrl.train.shared_prefix import group_by_prefix
from npcrl.train.shown_tokens import cut_data_to_shown


def _log(message: str) -> None:
    print(f"[npcrl reward-model] {message}", flush=True)


def _bar(items: list[Any], desc: str, progress: bool) -> Any:
    if not progress or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


def _targets(model: RewardModel, turns: Sequence[TrainingTurn]) -> np.ndarray:
    return standardised([t.reward for t in turns], model.target_mean, model.target_std)


def fit(
    model: RewardModel, turns: list[TrainingTurn], config: RewardModelConfig, seed: int, progress: bool = False
) -> list[dict[str, float]]:
    """Minimise the MSE of standardised rewards over ``config.epochs`` seeded shuffles; per-epoch losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    targets = torch.tensor(_targets(model, turns), dtype=torch.float32)
    prompts = [t.prompt_ids for t in turns]
    history = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = np.random.default_rng([seed, epoch, 7]).permutation(len(turns))
        batches = [order[i : i + config.batch_turns] for i in range(0, len(order), config.batch_turns)]
        total = 0.0
        for rows in _bar(batches, f"epoch {epoch}", progress):
            # Micro-batches bound activation memory; each adds its share of the batch's mean loss.
            for micro in group_by_prefix([int(i) for i in rows], prompts, config.micro_batch_turns):
                batch = collate([turns[int(i)] for i in micro], model.pad_id)
                starts = response_starts([prompts[int(i)] for i in micro])
                predictions = model(batch.input_ids, batch.attention_mask, starts)  # (b,)
                errors = (predictions - targets[torch.as_tensor(micro)]) ** 2
                loss = errors.sum() / len(rows)
                loss.backward()
                total += float(errors.detach().sum())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            if not (math.isfinite(total) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)  # dropped, never applied
                require_finite_numbers(
                    {"loss so far": total, "gradient norm": grad_norm},
                    f"reward model epoch {epoch + 1}",
                    "the optimizer step was skipped; nothing was written",
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        history.append({"epoch": epoch + 1, "loss": total / len(turns), "time_s": time.perf_counter() - started})
        _log(
            f"epoch {epoch + 1}/{config.epochs}: loss {total / len(turns):.4f} (standardised), {history[-1]['time_s']:.0f} s"
        )
    return history


@torch.no_grad()
def pooled_features(model: RewardModel, turns: Sequence[TrainingTurn], batch: int) -> np.ndarray:
    """(N, H) float64: what the head reads for each turn."""
    out = np.zeros((len(turns), model.head.in_features), dtype=np.float64)
    prompts = [t.prompt_ids for t in turns]
    for chunk in group_by_prefix(range(len(turns)), prompts, batch):
        packed = collate([turns[i] for i in chunk], model.pad_id)
        starts = response_starts([prompts[i] for i in chunk])
        out[chunk] = model.features(packed.input_ids, packed.attention_mask, starts).double().numpy()
    return out


def fit_ridge(
    model: RewardModel, turns: list[TrainingTurn], config: RewardModelConfig, seed: int
) -> tuple[list[dict[str, Any]], list[float]]:
    """Set the head of a frozen-backbone model in closed form: (the cross-validation curve, the
    fitted model's predictions on ``turns`` in reward units).

    Features come from one forward pass; the penalty with the lowest cross-validated MSE (folds by
    conversation, as the holdout is split) is refitted on all ``turns``.
    """
    started = time.perf_counter()
    features = pooled_features(model, turns, config.micro_batch_turns)
    require_finite_tensors([("pooled features", torch.from_numpy(features))], "reward model ridge fit", "inputs")
    targets = _targets(model, turns)
    _log(f"features of {len(turns)} turns: {time.perf_counter() - started:.0f} s")
    folds = conversation_folds([t.conversation_id for t in turns], config.ridge_folds, seed)
    _, cv_mse, best = select_ridge_penalty(features, targets, folds)
    weights, bias = ridge_fit(features, targets, [RIDGE_PENALTIES[best]])[0]
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weights).to(model.head.weight.dtype)[None, :])
        model.head.bias.fill_(bias)
    _log(
        f"ridge penalty {RIDGE_PENALTIES[best]:g} (cross-validated MSE {cv_mse[best]:.4f} standardised; "
        f"1.0 = predicting the mean), {time.perf_counter() - started:.0f} s"
    )
    curve = [
        {"penalty": penalty, "cv_mse": float(mse), "chosen": k == best}
        for k, (penalty, mse) in enumerate(zip(RIDGE_PENALTIES, cv_mse, strict=True))
    ]
    fitted = (features @ weights + bias) * model.target_std + model.target_mean
    return curve, [float(v) for v in fitted]


def evaluate(
    model: RewardModel,
    data: TrainingData,
    threshold: float,
    batch: int,
    train_predictions: Sequence[float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics on the held-out conversations and, for comparison, on the training turns.

    ``train_predictions`` (reward units), when the fit already has them, spare a second forward
    pass over the training turns.
    """
    baseline = model.target_mean  # the training mean: what a model that learned nothing predicts
    out = {}
    for name, turns in (("holdout", data.holdout), ("train", data.train)):
        known = train_predictions if name == "train" else None
        predictions = list(known) if known is not None else model.predict(turns, batch)
        out[name] = regression_metrics(predictions, [t.reward for t in turns], baseline, threshold)
    return out


@dataclass
class RewardModelResult:
    out: Path
    model: RewardModel
    data: TrainingData
    metrics: dict[str, dict[str, Any]]
    history: list[dict[str, float]]


def _empty_out_dir(out: str | Path) -> Path:
    """``out`` resolved; it must not exist or be an empty directory."""
    path = Path(out).expanduser().resolve()
    if path.is_file():
        raise TrainError(f"{path}: is a file; --out must be a directory that does not exist or is empty")
    if path.is_dir() and any(path.iterdir()):
        raise TrainError(f"{path}: output directory is not empty")
    return path


def _load_data(logs: str | Path | Sequence[str | Path], bundle: Bundle, config: TrainConfig) -> TrainingData:
    """The same turns and the same conversation split as `npcrl train` with this config and seed."""
    spec = load_reward_spec(config.data.reward_spec) if config.data.reward_spec else default_reward_spec()
    accepted, _ = accepted_bundle_ids(bundle, config.data.extra_bundles)
    data = load_training_data(logs, spec, accepted, bundle.manifest.vocab_size, config.data, config.seed)
    if config.data.train_tokens == "shown":
        cut_data_to_shown(data, bundle)  # the fresh lines it will score are cut alike
    if not data.holdout:
        raise TrainError(
            f"{data.report.log_dir}: no held-out conversations to measure the reward model on "
            f"(data.holdout_fraction = {config.data.holdout_fraction}, {data.report.conversations} conversations)"
        )
    _log(data.report.summary())
    turns = [*data.train, *data.holdout]
    require_finite_rewards([t.key for t in turns], [t.reward for t in turns], f"{data.report.log_dir}")
    return data


def _fit_head(
    model: RewardModel, data: TrainingData, config: TrainConfig, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(the fit's history, the metrics of the fitted model on both splits)."""
    rm = config.reward_model
    train_predictions = None
    if rm.head_fit == "ridge":
        history, train_predictions = fit_ridge(model, data.train, rm, config.seed)
        _log(f"scoring {len(data.holdout)} holdout turns")
    else:
        history = fit(model, data.train, rm, config.seed, progress)
        _log(f"scoring {len(data.holdout)} holdout and {len(data.train)} training turns")
    return history, evaluate(model, data, rm.engaged_threshold, rm.batch_turns, train_predictions)


def _model_record(model: RewardModel, config: TrainConfig, bundle: Bundle, base: Path) -> dict[str, Any]:
    """What the saved record says the model is: its settings, backbone, tokenizer and scaling."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": config.reward_model.backbone,
        "pooling": config.reward_model.pooling,
        "head_fit": config.reward_model.head_fit,
        "lora": {
            "lora_r": config.model.lora_r,
            "lora_alpha": config.model.lora_alpha,
            "lora_target_modules": list(config.model.lora_target_modules),
        },
        "base_weights": str(base.resolve()),
        "base_weights_sha256": base_weights_sha256(base),
        "bundle_id": bundle.bundle_id,
        "tokenizer_sha256": tokenizer_sha256(bundle),
        "pad_id": model.pad_id,
        "target_mean": model.target_mean,
        "target_std": model.target_std,
        "config": config.to_dict(),
    }


def train_reward_model(
    logs: str | Path | Sequence[str | Path],
    bundle_dir: str | Path,
    out: str | Path,
    config: TrainConfig,
    base_model: str | Path | None = None,
    progress: bool = True,
) -> RewardModelResult:
    """Logs (one play-log directory, or several pooled) + bundle -> trained reward model in ``out``
    (which must not exist or be empty)."""
    started = time.perf_counter()
    out = _empty_out_dir(out)
    bundle = load_bundle(bundle_dir)
    base = resolve_base_weights(bundle, base_model)
    data = _load_data(logs, bundle, config)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.seed)
    mean, std = target_scaling([t.reward for t in data.train])
    model, _ = build_reward_model(base, config.reward_model, config.model, config.seed, mean, std)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _log(
        f"{config.reward_model.backbone} reward model: {trainable / 1e6:.2f}M trainable parameters, "
        f"{len(data.train)} turns"
    )
    history, metrics = _fit_head(model, data, config, progress)
    record = {
        **_model_record(model, config, bundle, base),
        "logs": [str(d.expanduser().resolve()) for d in log_directories(logs)],
        "data": {k: v for k, v in data.report.to_dict().items() if k != "log_files"},
        "history": history,
        "metrics": metrics,
        "time_s": time.perf_counter() - started,
    }
    save_reward_model(model, record, out)
    return RewardModelResult(out=out, model=model, data=data, metrics=metrics, history=history)
