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
from npcrl.train.reference_cache import ReferenceHidden
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
    """(R, width, ...) from per-turn rows of their own lengths (first dimension); padded steps are zero
    (they are masked)."""
    out = torch.zeros((len(rows), width, *rows[0].shape[1:]), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
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
    reference: ReferenceHidden | None = None
    """the reference's states of turns scored before (None: the reference runs for every batch)"""
    kept_rows: int = 0
    """turns of the last ``score`` whose reference states were read, not computed (all processes)"""

    @torch.no_grad()
    def score(self, turns: list[TrainingTurn], reference_is_policy: bool, keys: list[int] | None = None) -> Rollout:
        """The scored rollout of ``turns``; ``reference_is_policy`` before the first update (one
        forward pass serves both). ``keys``: each turn's index among the training turns, under
        which ``reference`` keeps its reference states (None: nothing is kept or read)."""
        mine = list(range(self.dist.rank, len(turns), self.dist.world))
        scored: dict[int, tuple[torch.Tensor, ...]] = {}
        prompts = [t.prompt_ids for t in turns]
        kept = self.reference if keys is not None else None
        reused = 0
        for chunk in self.bar(group_by_prefix(mine, prompts, self.micro_batch_turns), "scoring"):
            batch = collate([turns[i] for i in chunk], self.pad_id)
            known = None if kept is None or keys is None else kept.get([keys[i] for i in chunk])
            reused += 0 if known is None else len(chunk)
            outputs = self.policy.score(
                batch,
                reference_is_policy=reference_is_policy,
                timer=self.timer,
                reference_hidden=None if known is None else _pad_rows(known, batch.mask.shape[1]),
            )
            for row, i in enumerate(chunk):
                length = len(turns[i].response_ids)
                scored[i] = tuple(t[row, :length].clone() for t in outputs[: 4 if kept is None else 5])
        for part in self.dist.all_gather_objects(scored):
            scored.update(part)
        self.kept_rows = int(self.dist.sum_all([float(reused)])[0])
        if kept is not None and keys is not None:  # every rank keeps every turn's states
            for i in range(len(turns)):
                kept.add(keys[i], scored[i][4])
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
