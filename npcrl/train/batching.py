"""Training turns to padded tensors.

A turn's sequence is ``prompt + response``, right-padded. The model reads the whole sequence, but
logits and values are only computed at the positions that predict response tokens: position
``P + t - 1`` predicts response token ``t`` (P = prompt length), which keeps the ``[B, T, V]``
logits to the response instead of the whole ~1000-token prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from npcrl.train.data import TrainingTurn


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) prompt + response, right-padded
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    positions: torch.Tensor  # (B, T) sequence position whose output predicts response token t
    response_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float, 1 on real response tokens
    behaviour_logprobs: torch.Tensor  # (B, T) mu, the sampler's log-probs
    logged_full_logprobs: torch.Tensor  # (B, T) the logging bundle's temperature-scaled softmax
    temperature: torch.Tensor  # (B,) the logged sampler temperature of each turn
    scores: torch.Tensor  # (B,) turn rewards (unclipped)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def collate(turns: Sequence[TrainingTurn], pad_id: int) -> Batch:
    if not turns:
        raise ValueError("cannot collate an empty list of turns")
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in turns]
    width = max(lengths)
    steps = max(len(t.response_ids) for t in turns)
    batch = len(turns)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    positions = torch.zeros((batch, steps), dtype=torch.long)
    response_ids = torch.full((batch, steps), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, steps), dtype=torch.float32)
    behaviour = torch.zeros((batch, steps), dtype=torch.float32)
    full = torch.zeros((batch, steps), dtype=torch.float32)
    for row, turn in enumerate(turns):
        prompt, response = len(turn.prompt_ids), len(turn.response_ids)
        input_ids[row, : prompt + response] = torch.tensor(turn.prompt_ids + turn.response_ids, dtype=torch.long)
        attention_mask[row, : prompt + response] = 1
        positions[row, :response] = torch.arange(prompt - 1, prompt + response - 1)
        response_ids[row, :response] = torch.tensor(turn.response_ids, dtype=torch.long)
        mask[row, :response] = 1.0
        behaviour[row, :response] = torch.tensor(turn.behaviour_logprobs, dtype=torch.float32)
        full[row, :response] = torch.tensor(turn.full_logprobs, dtype=torch.float32)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        positions=positions,
        response_ids=response_ids,
        mask=mask,
        behaviour_logprobs=behaviour,
        logged_full_logprobs=full,
        temperature=torch.tensor([t.temperature for t in turns], dtype=torch.float32),
        scores=torch.tensor([t.reward for t in turns], dtype=torch.float32),
    )
