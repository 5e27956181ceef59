"""Stage 1 of a PPO iteration: score the rollout batch (no grad).

pi_old log-probs, reference log-probs, values and the exact per-state KL for every turn; under
torchrun each rank scores its share and the results are gathered, so every rank holds the whole
batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from npcrl.train.batching import Batch, collate
from npcrl.train.data import TrainingTurn
from npcrl.train.distributed import Dist
from npcrl.train.phase_timer import PhaseTimer
from npcrl.train.policy import Policy
from npcrl.train.shared_prefix import group_by_prefix


@dataclass
class Rollout:
    """A scored rollout batch, padded to (R, T)."""

    turns: list[TrainingTurn]
    batch: Batch
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor
    """exact KL(pi_old || pi_ref) at each response state"""
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    weights: torch.Tensor | None = None


def _pad_rows(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out


@dataclass
class Scorer:
    """What scoring a rollout needs besides its turns."""

    policy: Policy
    dist: Dist
    pad_id: int
    micro_batch_turns: int
    timer: PhaseTimer
    bar: Callable[[list[Any], str], Any]
    """wraps a list of work items in a progress bar (or returns it)"""

    @torch.no_grad()
    def score(self, turns: list[TrainingTurn], reference_is_policy: bool) -> Rollout:
        """The scored rollout of ``turns``; ``reference_is_policy`` before the first update (one
        forward pass serves both)."""
        mine = list(range(self.dist.rank, len(turns), self.dist.world))
        scored: dict[int, tuple[torch.Tensor, ...]] = {}
        prompts = [t.prompt_ids for t in turns]
        for chunk in self.bar(group_by_prefix(mine, prompts, self.micro_batch_turns), "scoring"):
            batch = collate([turns[i] for i in chunk], self.pad_id)
            outputs = self.policy.score(batch, reference_is_policy=reference_is_policy, timer=self.timer)
            for row, i in enumerate(chunk):
                length = len(turns[i].response_ids)
                scored[i] = tuple(t[row, :length].clone() for t in outputs)
        for part in self.dist.all_gather_objects(scored):
            scored.update(part)
        batch = collate(turns, self.pad_id)
        width = batch.mask.shape[1]

        def padded(k: int) -> torch.Tensor:
            return _pad_rows([scored[i][k] for i in range(len(turns))], width)

        return Rollout(
            turns=turns,
            batch=batch,
            old_logprobs=padded(0),
            ref_logprobs=padded(1),
            values=padded(2),
            kl=padded(3),
        )
