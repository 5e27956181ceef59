"""An engagement predictor learned from play logs: the network, and its directory on disk.

The model reads a logged turn (prompt + response) with the bundle's own backbone and puts a scalar
head on the response's hidden states: the last token's (``pooling = "last"``, the one state that
has attended to the whole line) or their mean (``"mean"``). Its output is in standardised units
(the training turns' mean and standard deviation, ``npcrl.reward.model_data.target_scaling``);
``predict`` maps back to reward units. How it is fitted and judged: ``reward_model_train``.

Why regression on the reward and not a pairwise (Bradley-Terry) or a classification loss:
* pairwise losses need two answers to the same prompt; play logs hold one answer per prompt
  (the prompt carries the conversation so far), so pairs would compare different situations and
  the model would learn which situations go well, not which lines do;
* an engaged/not classifier throws away the reward's size (a quest accepted is worth more than a
  reply), which is exactly what PPO maximises.

On disk a reward model is a directory written atomically (``npcrl.reward.model_record`` names
its files and checks its record): the head and the trainable backbone tensors (LoRA adapters, or
every weight for ``full``) as safetensors, and a JSON record. Only safetensors are ever loaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from npcrl.durable import replace_dir
from npcrl.errors import TrainError
from npcrl.reward.model_record import (
    BACKBONE_PREFIX,
    HEAD_PREFIX,
    METRICS_FILE,
    RECORD_FILE,
    TENSORS_FILE,
    check_base_weights,
    check_tensors_file,
    read_record,
    record_json,
)
from npcrl.runtime.bundle import Bundle, sha256_file
from npcrl.train.config import REWARD_MODEL_BACKBONES, REWARD_MODEL_POOLINGS, ModelConfig, RewardModelConfig
from npcrl.train.data import TrainingTurn, tokenizer_sha256
from npcrl.train.finite import require_finite_tensors
from npcrl.train.policy import apply_lora, decoder_of, hidden_size_of, load_backbone
from npcrl.train.shared_prefix import decoder_hidden, group_by_prefix

HEAD_INIT_STD = 0.02  # transformers' initializer_range for new heads


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
            hidden, offset = decoder_hidden(decoder_of(self.lm), input_ids, attention_mask, limit=int(needed.min()))
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
            scores = self(ids, mask, response_starts([prompts[i] for i in chunk])) * self.target_std + self.target_mean
            for i, score in zip(chunk, scores, strict=True):
                out[i] = float(score)
        return out

    def predict(self, turns: Sequence[TrainingTurn], batch: int = 8) -> list[float]:
        return self.predict_sequences([t.prompt_ids for t in turns], [t.response_ids for t in turns], batch)


def response_starts(prompts: Sequence[Sequence[int]]) -> torch.Tensor:
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


# --- saving and loading --------------------------------------------------------------------------


def save_reward_model(model: RewardModel, record: dict[str, Any], out: Path) -> None:
    """Write ``out`` (absent or empty) atomically: a staging directory beside it, fsynced, renamed into place."""
    tensors = {k: v.detach().contiguous().clone() for k, v in model.trainable_tensors().items()}
    require_finite_tensors(tensors.items(), f"{out}: not written", "reward model tensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    try:
        save_file(tensors, str(staging / TENSORS_FILE))
        record = {**record, "tensors_sha256": sha256_file(staging / TENSORS_FILE)}
        (staging / RECORD_FILE).write_text(record_json(record), encoding="utf-8")
        (staging / METRICS_FILE).write_text(json.dumps(record["metrics"], indent=1), encoding="utf-8")
        replace_dir(staging, out)  # fsyncs every file before the rename
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_tensors(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    check_tensors_file(path, expected_sha256)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise TrainError(f"{path}: not a readable safetensors file: {exc}") from exc


def _recorded_settings(record: dict[str, Any], where: Path) -> tuple[RewardModelConfig, ModelConfig]:
    """The reward model and LoRA settings a record was trained with."""
    if record["backbone"] not in REWARD_MODEL_BACKBONES:
        raise TrainError(f"{where}: backbone = {record['backbone']!r} is not lora, frozen or full")
    pooling = str(record.get("pooling", "last"))  # records written before pooling existed read the last token
    if pooling not in REWARD_MODEL_POOLINGS:
        raise TrainError(f"{where}: pooling = {pooling!r} is not one of {', '.join(REWARD_MODEL_POOLINGS)}")
    try:
        lora = ModelConfig(mode="lora", **record["lora"])
    except TypeError as exc:
        raise TrainError(f"{where}: bad lora settings {record['lora']!r}: {exc}") from exc
    return RewardModelConfig(backbone=str(record["backbone"]), pooling=pooling), lora


def _copy_tensors(model: RewardModel, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Load the saved tensors into a freshly built model, refusing any that do not fit it."""
    expected = model.trainable_tensors()
    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise TrainError(f"{where}: tensors do not match the model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if expected[name].shape != tensor.shape:
                raise TrainError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}, the model needs {tuple(expected[name].shape)}"
                )
            expected[name].copy_(tensor)


def load_reward_model(path: str | Path, bundle: Bundle | None = None) -> tuple[RewardModel, dict[str, Any]]:
    """The reward model saved in directory ``path`` and its record.

    With ``bundle``, its tokenizer must be the one the reward model was trained with: it reads
    the policy's token ids as they are.
    """
    path = Path(path).expanduser()
    record = read_record(path)
    if bundle is not None and record["tokenizer_sha256"] != tokenizer_sha256(bundle):
        raise TrainError(
            f"{path / RECORD_FILE}: trained with another tokenizer than bundle {bundle.root}'s; "
            "a reward model reads token ids, so it must share the policy's tokenizer"
        )
    tensors = _read_tensors(path / TENSORS_FILE, str(record["tensors_sha256"]))
    require_finite_tensors(tensors.items(), str(path / TENSORS_FILE), "tensors")  # would score every line NaN
    base = check_base_weights(record, path / RECORD_FILE)
    config, lora = _recorded_settings(record, path / RECORD_FILE)
    model, _ = build_reward_model(
        base, config, lora, 0, float(record["target_mean"]), float(record["target_std"]), int(record["pad_id"])
    )
    _copy_tensors(model, tensors, path / TENSORS_FILE)
    for param in model.parameters():
        param.requires_grad_(False)  # a loaded reward model only scores
    return model, record
