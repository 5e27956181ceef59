"""An engagement predictor learned from play logs: the second way to learn from them.

The model reads a logged turn (prompt + response) with the bundle's own backbone and puts a scalar
head on the response's hidden states: the last token's (``pooling = "last"``, the one state that
has attended to the whole line) or their mean (``"mean"``). It is trained by regression (MSE) on
the per-turn reward the trainer computes from the logs (``npcrl.reward.engagement`` + the reward spec),
with the trainer's conversation-level train/holdout split, and judged on the held-out conversations.

Two ways to fit it: AdamW steps on the head and the trainable backbone (LoRA, full, or head
only), or, on a frozen backbone, ridge regression in closed form (``head_fit = "ridge"``): one
forward pass gives every turn's features, and the penalty is chosen by cross-validation over the
training conversations. With a few hundred logged turns the second is the one that generalises:
LoRA regression on 230 real turns fitted noise (held-out r < 0, docs/RESULTS.md).

Why regression on the reward and not a pairwise (Bradley-Terry) or a classification loss:
* pairwise losses need two answers to the same prompt; play logs hold one answer per prompt
  (the prompt carries the conversation so far), so pairs would compare different situations and
  the model would learn which situations go well, not which lines do;
* an engaged/not classifier throws away the reward's size (a quest accepted is worth more than a
  reply), which is exactly what PPO maximises.
The targets are standardised with the training turns' mean and standard deviation (the head's
output is in those units; ``predict`` maps back to reward units), so one learning rate suits any
reward spec.

Held-out metrics (``regression_metrics``): Pearson and Spearman correlation, MSE against the
baseline that predicts the training mean for every turn, and the accuracy of "engaged"
(reward > ``reward_model.engaged_threshold``) next to the majority-class accuracy.

On disk a reward model is a directory written atomically: ``reward_model.safetensors`` (the head
and the trainable backbone tensors: LoRA adapters, or every weight for ``full``),
``reward_model.json`` (format, settings, the base weights it adapts with their sha256, the
tokenizer hash, target scaling, metrics) and ``metrics.json``. Only safetensors are ever loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from npcrl.errors import TrainError
from npcrl.reward.spec import default_reward_spec, load_reward_spec
from npcrl.runtime.bundle import Bundle, load_bundle, sha256_file
from npcrl.train.batching import collate
from npcrl.train.config import (
    REWARD_MODEL_BACKBONES,
    REWARD_MODEL_POOLINGS,
    ModelConfig,
    RewardModelConfig,
    TrainConfig,
)
from npcrl.train.data import TrainingData, TrainingTurn, load_training_data, log_directories
from npcrl.train.finite import require_finite_numbers, require_finite_rewards, require_finite_tensors
from npcrl.train.policy import _decoder, apply_lora, hidden_size_of, load_backbone, resolve_base_weights
from npcrl.train.shared_prefix import decoder_hidden, group_by_prefix

FORMAT = "npcrl-reward-model"
FORMAT_VERSION = 1
TENSORS_FILE = "reward_model.safetensors"
RECORD_FILE = "reward_model.json"
METRICS_FILE = "metrics.json"
HEAD_PREFIX = "head."
BACKBONE_PREFIX = "backbone."
HEAD_INIT_STD = 0.02  # transformers' initializer_range for new heads
# A pickle (what torch.save writes, alone or inside a zip) starts with one of these.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


def _log(message: str) -> None:
    print(f"[npcrl reward-model] {message}", flush=True)


# --- metrics (pure) ------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1, dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """None when either side is constant (the correlation is undefined, not 0)."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else None


def regression_metrics(
    predictions: Sequence[float], targets: Sequence[float], baseline: float, threshold: float
) -> dict[str, Any]:
    """How well ``predictions`` track ``targets`` (both in reward units).

    ``baseline`` is the constant prediction to beat (the training turns' mean reward);
    ``mse_skill = 1 - mse / baseline_mse`` (> 0: better than the baseline). "Engaged" means
    reward > ``threshold``; ``engaged_accuracy`` is the share of turns where
    (prediction > threshold) == (reward > threshold) and ``majority_accuracy`` what always
    answering the commoner class scores.
    """
    p = np.asarray(predictions, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"need two equally long non-empty lists, got {p.shape} and {t.shape}")
    mse = float(((p - t) ** 2).mean())
    baseline_mse = float(((baseline - t) ** 2).mean())
    engaged = t > threshold
    engaged_rate = float(engaged.mean())
    return {
        "turns": len(t),
        "pearson": _pearson(p, t),
        "spearman": _pearson(_ranks(p), _ranks(t)),
        "mse": mse,
        "baseline_mse": baseline_mse,
        "baseline": float(baseline),
        "mse_skill": 1.0 - mse / baseline_mse if baseline_mse > 0 else None,
        "engaged_threshold": float(threshold),
        "engaged_rate": engaged_rate,
        "engaged_accuracy": float(((p > threshold) == engaged).mean()),
        "majority_accuracy": max(engaged_rate, 1.0 - engaged_rate),
        "prediction_mean": float(p.mean()),
        "reward_mean": float(t.mean()),
    }


def format_metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The metrics of each split (columns) as an aligned text table; rows whose key the first
    split lacks (``prediction_sd`` is only computed when scoring logs) are left out."""
    rows = [
        ("turns", "turns", "{:d}"),
        ("Pearson r", "pearson", "{:.3f}"),
        ("Spearman rho", "spearman", "{:.3f}"),
        ("MSE", "mse", "{:.4f}"),
        ("MSE, predict the train mean", "baseline_mse", "{:.4f}"),
        ("MSE skill (1 - MSE / baseline)", "mse_skill", "{:.3f}"),
        ("engaged accuracy", "engaged_accuracy", "{:.3f}"),
        ("majority-class accuracy", "majority_accuracy", "{:.3f}"),
        ("engaged rate", "engaged_rate", "{:.3f}"),
        ("mean reward", "reward_mean", "{:.4f}"),
        ("mean prediction", "prediction_mean", "{:.4f}"),
        ("prediction sd", "prediction_sd", "{:.4f}"),
    ]
    splits = list(metrics)
    first = next(iter(metrics.values()))
    widths = [max(12, len(split) + 2) for split in splits]
    lines = [f"{'metric':<32}" + "".join(f"{s:>{w}}" for s, w in zip(splits, widths, strict=True))]
    for label, key, fmt in rows:
        if key not in first:
            continue
        cells = []
        for split, width in zip(splits, widths, strict=True):
            value = metrics[split][key]
            cells.append(f"{'n/a' if value is None else fmt.format(value):>{width}}")
        lines.append(f"{label:<32}" + "".join(cells))
    lines.append(f"(engaged: reward > {first['engaged_threshold']:g})")
    return "\n".join(lines)


# --- the model -----------------------------------------------------------------------------------


class RewardModel(nn.Module):
    """Backbone + scalar head on the response's pooled hidden state; ``forward`` is in standardised units.

    ``pooling`` 'last' reads the hidden state of the response's last token (it has attended to the
    whole line), 'mean' the mean of the response tokens' hidden states.
    """

    def __init__(
        self,
        lm: nn.Module,
        head: nn.Linear,
        backbone: str,
        target_mean: float,
        target_std: float,
        pad_id: int,
        pooling: str = "last",
    ) -> None:
        super().__init__()
        self.lm = lm
        self.head = head
        self.backbone = backbone
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self.pad_id = int(pad_id)
        self.pooling = pooling

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: torch.Tensor
    ) -> torch.Tensor:
        """(B, H) pooled hidden states for right-padded (B, L) rows whose responses start at ``response_start``."""
        grad = torch.is_grad_enabled() and self.backbone != "frozen"
        last = attention_mask.sum(dim=1) - 1  # (B,) the last real token of each row
        first = torch.minimum(response_start.to(last.device), last)  # an empty response pools its last prompt token
        needed = last if self.pooling == "last" else first
        with torch.set_grad_enabled(grad):
            # after the final norm; rows sharing a prompt prefix run it once (exact)
            hidden, offset = decoder_hidden(_decoder(self.lm), input_ids, attention_mask, limit=int(needed.min()))
        hidden = hidden.float()
        rows = torch.arange(hidden.shape[0])
        if self.pooling == "last":
            return hidden[rows, last - offset]
        positions = torch.arange(hidden.shape[1], device=hidden.device) + offset  # (L - offset,)
        inside = (positions[None, :] >= first[:, None]) & (positions[None, :] <= last[:, None])  # (B, L - offset)
        weights = inside.to(hidden.dtype)
        return (hidden * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: torch.Tensor
    ) -> torch.Tensor:
        """(B,) standardised predictions for right-padded (B, L) rows."""
        return self.head(self.features(input_ids, attention_mask, response_start)).squeeze(-1)

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """What is saved: the head and the backbone weights that train (LoRA adapters, all, or none).

        Decided by the backbone setting, not by ``requires_grad``, so a loaded (frozen) model names the same set.
        """
        out: dict[str, torch.Tensor] = {f"{HEAD_PREFIX}{n}": p for n, p in self.head.named_parameters()}
        for name, param in self.lm.named_parameters():
            if self.backbone == "full" or (self.backbone == "lora" and "lora_" in name):
                out[f"{BACKBONE_PREFIX}{name}"] = param
        return out

    @torch.no_grad()
    def predict_sequences(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], batch: int = 8
    ) -> list[float]:
        """Predicted rewards (reward units) of prompt + response pairs."""
        out = [0.0] * len(prompts)
        for chunk in group_by_prefix(range(len(prompts)), prompts, batch):
            ids, mask = _pack([prompts[i] for i in chunk], [responses[i] for i in chunk], self.pad_id)
            scores = self(ids, mask, _response_starts([prompts[i] for i in chunk])) * self.target_std + self.target_mean
            for i, score in zip(chunk, scores, strict=True):
                out[i] = float(score)
        return out

    def predict(self, turns: Sequence[TrainingTurn], batch: int = 8) -> list[float]:
        return self.predict_sequences([t.prompt_ids for t in turns], [t.response_ids for t in turns], batch)


def _response_starts(prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B,) where each row's response starts: its prompt's length."""
    return torch.tensor([len(prompt) for prompt in prompts], dtype=torch.long)


def _pack(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input ids and attention mask of prompt + response."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        sequence = list(prompt) + list(response)
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def build_reward_model(
    source: Path,
    config: RewardModelConfig,
    lora: ModelConfig,
    seed: int,
    target_mean: float = 0.0,
    target_std: float = 1.0,
    pad_id: int | None = None,
) -> tuple[RewardModel, Any]:
    """A fresh reward model on the HF weights at ``source`` (LoRA settings from ``lora``) and its tokenizer."""
    model, tokenizer, family = load_backbone(source)
    if config.backbone == "lora":
        lm: nn.Module = apply_lora(model, lora, family, seed)
    else:
        lm = model
        for param in lm.parameters():
            param.requires_grad_(config.backbone == "full")
    head = nn.Linear(hidden_size_of(model), 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, HEAD_INIT_STD, generator=generator)
        head.bias.zero_()  # with standardised targets: the untrained model predicts the training mean
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reward_model = RewardModel(lm, head, config.backbone, target_mean, target_std, int(pad_id), config.pooling)
    reward_model.eval()  # no dropout; gradients flow in eval mode too
    return reward_model, tokenizer


# --- training ------------------------------------------------------------------------------------


def fit(
    model: RewardModel, turns: list[TrainingTurn], config: RewardModelConfig, seed: int, progress: bool = False
) -> list[dict[str, float]]:
    """Minimise the MSE of standardised rewards over ``config.epochs`` seeded shuffles; per-epoch losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    targets = torch.tensor([(t.reward - model.target_mean) / model.target_std for t in turns], dtype=torch.float32)
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
                starts = _response_starts([prompts[int(i)] for i in micro])
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


RIDGE_PENALTIES = tuple(10.0**k for k in range(-4, 5))
"""ridge penalties tried, in units of the mean squared singular value of the centred features (scale-free)"""


@torch.no_grad()
def pooled_features(model: RewardModel, turns: Sequence[TrainingTurn], batch: int) -> np.ndarray:
    """(N, H) float64: what the head reads for each turn."""
    out = np.zeros((len(turns), model.head.in_features), dtype=np.float64)
    prompts = [t.prompt_ids for t in turns]
    for chunk in group_by_prefix(range(len(turns)), prompts, batch):
        packed = collate([turns[i] for i in chunk], model.pad_id)
        starts = _response_starts([prompts[i] for i in chunk])
        out[chunk] = model.features(packed.input_ids, packed.attention_mask, starts).double().numpy()
    return out


def ridge_fit(features: np.ndarray, targets: np.ndarray, penalties: Sequence[float]) -> list[tuple[np.ndarray, float]]:
    """(weights, bias) minimising ``|X w + b - y|^2 + lam |w|^2`` for each penalty (b is not penalised).

    One SVD of the centred features serves every penalty; a penalty is ``penalty * mean(s^2)``.
    """
    x_mean, y_mean = features.mean(axis=0), float(targets.mean())
    u, s, vt = np.linalg.svd(features - x_mean, full_matrices=False)
    scale = float((s**2).mean()) if s.size and float((s**2).mean()) > 0 else 1.0
    projected = u.T @ (targets - y_mean)
    solutions = []
    for penalty in penalties:
        weights = vt.T @ (s / (s**2 + penalty * scale) * projected)
        solutions.append((weights, y_mean - float(x_mean @ weights)))
    return solutions


def conversation_folds(conversation_ids: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Boolean held-out masks over rows whose conversations are ``conversation_ids``: conversations
    dealt into ``folds`` seeded groups (fewer when there are fewer conversations), so no
    conversation is on both sides of a fold."""
    conversations = sorted(set(conversation_ids))
    if len(conversations) < 2:
        raise TrainError(
            f"cross-validating the ridge penalty needs >= 2 training conversations, got {len(conversations)}"
        )
    order = np.random.default_rng([seed, 11]).permutation(len(conversations))
    fold_of = {conversations[c]: k % folds for k, c in enumerate(order)}
    ids = np.array([fold_of[c] for c in conversation_ids])
    return [ids == k for k in range(min(folds, len(conversations)))]


def cross_validated_predictions(
    features: np.ndarray, targets: np.ndarray, folds: Sequence[np.ndarray], penalties: Sequence[float]
) -> np.ndarray:
    """(len(penalties), N): each row's prediction by the ridge fitted on the other folds, per penalty."""
    predictions = np.zeros((len(penalties), len(targets)))
    for held in folds:
        for k, (weights, bias) in enumerate(ridge_fit(features[~held], targets[~held], penalties)):
            predictions[k, held] = features[held] @ weights + bias
    return predictions


def select_ridge_penalty(
    features: np.ndarray, targets: np.ndarray, folds: Sequence[np.ndarray], penalties: Sequence[float] = RIDGE_PENALTIES
) -> tuple[np.ndarray, np.ndarray, int]:
    """(cross-validated predictions per penalty, their MSE per penalty, the index of the lowest MSE)."""
    predictions = cross_validated_predictions(features, targets, folds, penalties)
    cv_mse = ((predictions - targets) ** 2).mean(axis=1)
    return predictions, cv_mse, int(np.argmin(cv_mse))


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
    targets = np.array([(t.reward - model.target_mean) / model.target_std for t in turns], dtype=np.float64)
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


def _bar(items: list[Any], desc: str, progress: bool) -> Any:
    if not progress or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


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


def _target_scaling(turns: list[TrainingTurn]) -> tuple[float, float]:
    rewards = np.array([t.reward for t in turns], dtype=np.float64)
    std = float(rewards.std())
    return float(rewards.mean()), std if std > 1e-6 else 1.0  # constant rewards: nothing to scale


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
    from npcrl.train.run import accepted_bundle_ids, tokenizer_sha256

    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    if out.is_file():
        raise TrainError(f"{out}: is a file; --out must be a directory that does not exist or is empty")
    if out.is_dir() and any(out.iterdir()):
        raise TrainError(f"{out}: output directory is not empty")
    rm = config.reward_model
    bundle = load_bundle(bundle_dir)
    base = resolve_base_weights(bundle, base_model)
    spec = load_reward_spec(config.data.reward_spec) if config.data.reward_spec else default_reward_spec()
    accepted, _ = accepted_bundle_ids(bundle, config.data.extra_bundles)
    # The same turns and the same conversation split as `npcrl train` with this config and seed.
    data = load_training_data(logs, spec, accepted, bundle.manifest.vocab_size, config.data, config.seed)
    if not data.holdout:
        raise TrainError(
            f"{data.report.log_dir}: no held-out conversations to measure the reward model on "
            f"(data.holdout_fraction = {config.data.holdout_fraction}, {data.report.conversations} conversations)"
        )
    _log(data.report.summary())
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    turns = [*data.train, *data.holdout]
    require_finite_rewards([t.key for t in turns], [t.reward for t in turns], f"{data.report.log_dir}")
    torch.manual_seed(config.seed)
    mean, std = _target_scaling(data.train)
    model, _ = build_reward_model(base, rm, config.model, config.seed, mean, std)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _log(f"{rm.backbone} reward model: {trainable / 1e6:.2f}M trainable parameters, {len(data.train)} turns")
    train_predictions = None
    if rm.head_fit == "ridge":
        history, train_predictions = fit_ridge(model, data.train, rm, config.seed)
        _log(f"scoring {len(data.holdout)} holdout turns")
    else:
        history = fit(model, data.train, rm, config.seed, progress)
        _log(f"scoring {len(data.holdout)} holdout and {len(data.train)} training turns")
    metrics = evaluate(model, data, rm.engaged_threshold, rm.batch_turns, train_predictions)
    record = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": rm.backbone,
        "pooling": rm.pooling,
        "head_fit": rm.head_fit,
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
        "target_mean": mean,
        "target_std": std,
        "logs": [str(d.expanduser().resolve()) for d in log_directories(logs)],
        "data": {k: v for k, v in data.report.to_dict().items() if k != "log_files"},
        "config": config.to_dict(),
        "history": history,
        "metrics": metrics,
        "time_s": time.perf_counter() - started,
    }
    save_reward_model(model, record, out)
    return RewardModelResult(out=out, model=model, data=data, metrics=metrics, history=history)


# --- saving and loading --------------------------------------------------------------------------


def base_weights_sha256(base: Path) -> dict[str, str]:
    """sha256 of the files that define the backbone: config.json and every safetensors shard."""
    names = ["config.json", *sorted(p.name for p in base.glob("*.safetensors"))]
    return {name: sha256_file(base / name) for name in names}


def save_reward_model(model: RewardModel, record: dict[str, Any], out: Path) -> None:
    """Write ``out`` atomically: a staging directory beside it, fsynced, renamed into place."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in model.trainable_tensors().items()}
    require_finite_tensors(tensors.items(), f"{out}: not written", "reward model tensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    try:
        save_file(tensors, str(staging / TENSORS_FILE))
        record = {**record, "tensors_sha256": sha256_file(staging / TENSORS_FILE)}
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        (staging / METRICS_FILE).write_text(json.dumps(record["metrics"], indent=1), encoding="utf-8")
        for name in (TENSORS_FILE, RECORD_FILE, METRICS_FILE):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        if out.exists():
            out.rmdir()  # empty (checked by the caller): rename cannot replace a directory on every OS
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_record(path: Path) -> dict[str, Any]:
    record_path = path / RECORD_FILE
    if not path.exists():
        raise TrainError(f"{path}: no such reward model directory")
    if not path.is_dir():
        raise TrainError(
            f"{path}: is a file; a reward model is the directory written by `npcrl reward-model train --out` "
            f"(holding {RECORD_FILE} and {TENSORS_FILE})"
        )
    if not record_path.is_file():
        raise TrainError(f"{record_path}: missing; {path} is not a reward model directory")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainError(f"{record_path}: cannot read JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise TrainError(f"{record_path}: not a reward model record (format is not {FORMAT!r})")
    if record.get("version") != FORMAT_VERSION:
        raise TrainError(f"{record_path}: version {record.get('version')!r}; this npcrl reads {FORMAT_VERSION}")
    needed = ("backbone", "lora", "base_weights", "base_weights_sha256", "tokenizer_sha256", "pad_id")
    missing = [key for key in (*needed, "target_mean", "target_std", "tensors_sha256") if key not in record]
    if missing:
        raise TrainError(f"{record_path}: missing field(s) {', '.join(missing)}")
    return record


def _read_tensors(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainError(f"{path}: missing")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise TrainError(f"{path}: a pickle (torch.save) file, not safetensors; only safetensors are loaded")
    if sha256_file(path) != expected_sha256:
        raise TrainError(f"{path}: sha256 differs from the one recorded in {RECORD_FILE}; the file was modified")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise TrainError(f"{path}: not a readable safetensors file: {exc}") from exc


def load_reward_model(path: str | Path, bundle: Bundle | None = None) -> tuple[RewardModel, dict[str, Any]]:
    """The reward model saved in directory ``path`` and its record.

    With ``bundle``, its tokenizer must be the one the reward model was trained with: it reads
    the policy's token ids as they are.
    """
    path = Path(path).expanduser()
    record = _read_record(path)
    if bundle is not None:
        from npcrl.train.run import tokenizer_sha256

        if record["tokenizer_sha256"] != tokenizer_sha256(bundle):
            raise TrainError(
                f"{path / RECORD_FILE}: trained with another tokenizer than bundle {bundle.root}'s; "
                "a reward model reads token ids, so it must share the policy's tokenizer"
            )
    tensors = _read_tensors(path / TENSORS_FILE, str(record["tensors_sha256"]))
    require_finite_tensors(tensors.items(), str(path / TENSORS_FILE), "tensors")  # would score every line NaN
    base = Path(str(record["base_weights"]))
    if not (base / "config.json").is_file():
        raise TrainError(f"{path / RECORD_FILE}: its base weights {base} are gone (config.json is missing)")
    if base_weights_sha256(base) != record["base_weights_sha256"]:
        raise TrainError(f"{path / RECORD_FILE}: the base weights in {base} changed since the reward model was trained")
    if record["backbone"] not in REWARD_MODEL_BACKBONES:
        raise TrainError(f"{path / RECORD_FILE}: backbone = {record['backbone']!r} is not lora, frozen or full")
    pooling = str(record.get("pooling", "last"))  # records written before pooling existed read the last token
    if pooling not in REWARD_MODEL_POOLINGS:
        raise TrainError(
            f"{path / RECORD_FILE}: pooling = {pooling!r} is not one of {', '.join(REWARD_MODEL_POOLINGS)}"
        )
    config = RewardModelConfig(backbone=str(record["backbone"]), pooling=pooling)
    try:
        lora = ModelConfig(mode="lora", **record["lora"])
    except TypeError as exc:
        raise TrainError(f"{path / RECORD_FILE}: bad lora settings {record['lora']!r}: {exc}") from exc
    model, _ = build_reward_model(
        base, config, lora, 0, float(record["target_mean"]), float(record["target_std"]), int(record["pad_id"])
    )
    expected = model.trainable_tensors()
    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise TrainError(
            f"{path / TENSORS_FILE}: tensors do not match the model (missing {missing}, unexpected {extra})"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            if expected[name].shape != tensor.shape:
                raise TrainError(
                    f"{path / TENSORS_FILE}: {name} has shape {tuple(tensor.shape)}, "
                    f"the model needs {tuple(expected[name].shape)}"
                )
            expected[name].copy_(tensor)
    for param in model.parameters():
        param.requires_grad_(False)  # a loaded reward model only scores
    return model, record
