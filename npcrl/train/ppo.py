"""One PPO iteration over logged turns, in three stages that each fit on a screen:

1. ``score`` (``rollout.py``): pi_old log-probs, reference log-probs and values for the rollout
   batch (no grad); under torchrun each rank scores its share and the results are gathered, so
   every rank holds the whole batch.
2. ``advantages``: KL-penalised per-token rewards, GAE, whitening and the truncated importance
   weights pi_old/mu (docs/TRAINING.md) - computed identically on every rank.
3. ``update``: epochs of clipped-policy + clipped-value (+ entropy) steps over shuffled minibatches
   with gradient accumulation; a minibatch's loss is a sum over its tokens divided by the token
   count of the whole (global) minibatch, so N processes take exactly the step of 1 process.

In the on-policy mode (``data.mode = "reward_model"``) a stage 0 comes first: the current policy
answers the rollout turns' prompts and a reward model scores the answers (``onpolicy.py``); the
three stages then run unchanged, with the behaviour set to pi_old (importance weights 1).

Data and minibatch order (and on-policy sampling seeds) come from the seed and the iteration
number alone, which is what makes a resumed run end where an uninterrupted one would. Each
iteration's metrics record the wall time of its phases (``phase_timer.py``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from npcrl.errors import TrainConfigError
from npcrl.train.batching import collate
from npcrl.train.checkpoint import copy_trainable
from npcrl.train.config import TrainConfig
from npcrl.train.contradiction_multiplier import ContradictionMultiplier
from npcrl.train.data import TrainingTurn
from npcrl.train.distributed import Dist
from npcrl.train.finite import (
    require_finite_masked,
    require_finite_numbers,
    require_finite_rewards,
    require_finite_tensors,
)
from npcrl.train.kl_control import AdaptiveKLController, FixedKLController, kl_controller
from npcrl.train.onpolicy import FreshRollouts
from npcrl.train.phase_timer import PhaseTimer, resident_gb
from npcrl.train.policy import Policy, batch_inputs
from npcrl.train.ppo_math import (
    approx_kl,
    clip_scores,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalty_rewards,
    masked_sum,
    masked_whiten,
    standardize_scores,
    truncated_importance_weights,
)
from npcrl.train.reference_cache import ReferenceHidden
from npcrl.train.rollout import Rollout, Scorer
from npcrl.train.rollout_stats import advantage_stats, sequence_log_weights
from npcrl.train.shared_prefix import group_by_prefix, prefixes_together
from npcrl.train.turn_credit import turn_credit_rows


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PPOTrainer:
    def __init__(
        self,
        policy: Policy,
        train_turns: list[TrainingTurn],
        config: TrainConfig,
        dist: Dist,
        pad_id: int,
        progress: bool = False,
        fresh: FreshRollouts | None = None,
        timer: PhaseTimer | None = None,
    ) -> None:
        """``fresh`` switches to on-policy PPO: the rollout's responses are sampled from the current
        policy and scored by a reward model (``npcrl.train.onpolicy``) instead of read from the logs.
        ``timer`` records the wall time of each phase (the run's own, to share it with the stages
        outside the iterations).

        ``ppo.max_iterations_per_pass`` is applied here: ``self.config`` holds the rollout and
        minibatch sizes the run uses, ``self.batch_scale`` the factor they were multiplied by."""
        if not train_turns:
            raise TrainConfigError("no training turns")
        self.batch_scale = config.ppo.batch_scale(len(train_turns))
        config = dataclasses.replace(config, ppo=config.ppo.scaled_to_logs(len(train_turns)))
        ppo = config.ppo
        if ppo.minibatch_turns % dist.world:
            raise TrainConfigError(
                f"ppo.minibatch_turns = {ppo.minibatch_turns}: must be divisible by the {dist.world} processes"
            )
        self.policy = policy
        self.turns = train_turns
        self.config = config
        self.dist = dist
        self.pad_id = pad_id
        self.progress = progress and dist.is_main
        self.fresh = fresh
        params = [p for _, p in policy.trainable_parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=ppo.learning_rate, weight_decay=ppo.weight_decay)
        self.kl_controller: AdaptiveKLController | FixedKLController = kl_controller(ppo)
        self.contradiction = ContradictionMultiplier.for_turns(
            train_turns, config.contradiction, config.run.ope_log_weight_clip, ppo.rollout_turns
        )
        self.iteration = 0  # iterations finished
        self.updates = 0  # optimizer steps taken
        self.metrics: list[dict[str, Any]] = []
        self.turn_credit: list[dict[str, Any]] = []  # per turn per iteration (turn_credit.py)
        self.total_iterations = ppo.iterations or math.ceil(ppo.passes * len(train_turns) / ppo.rollout_turns)
        self.ddp: DistributedDataParallel | None = DistributedDataParallel(policy.module) if dist.enabled else None
        self._orders: dict[int, np.ndarray] = {}
        self.timer = timer if timer is not None else PhaseTimer()
        # Logged turns are the same in every pass, so the reference's view of each is kept; fresh
        # samples are new every iteration.
        self.reference = ReferenceHidden() if fresh is None else None
        self.scorer = Scorer(policy, dist, pad_id, ppo.micro_batch_turns, self.timer, self._bar, self.reference)

    # -- data order ---------------------------------------------------------------------------
    def rollout_indices(self, iteration: int) -> list[int]:
        """The training turns of ``iteration``, by index: a stream of seeded permutations of the
        training set, one per pass."""
        size, n = self.config.ppo.rollout_turns, len(self.turns)
        picked = []
        for k in range(iteration * size, (iteration + 1) * size):
            data_pass, j = divmod(k, n)
            if data_pass not in self._orders:
                self._orders[data_pass] = np.random.default_rng([self.config.seed, data_pass]).permutation(n)
            picked.append(int(self._orders[data_pass][j]))
        return picked

    def rollout_turns(self, iteration: int) -> list[TrainingTurn]:
        """The turns of ``iteration`` (``rollout_indices``)."""
        return [self.turns[i] for i in self.rollout_indices(iteration)]

    # -- stage 1 ------------------------------------------------------------------------------
    def score(self, turns: list[TrainingTurn], keys: list[int] | None = None) -> Rollout:
        """``keys``: the turns' indices among the training turns, under which their reference
        states are kept for later passes (None: the reference runs for them now and keeps nothing)."""
        # Before the first update the policy is the reference: one forward pass serves both.
        return self.scorer.score(turns, reference_is_policy=self.updates == 0, keys=keys)

    # -- stage 2 ------------------------------------------------------------------------------
    def advantages(self, rollout: Rollout) -> dict[str, float]:
        ppo, mask = self.config.ppo, rollout.batch.mask
        self._check_rollout(rollout)
        # the rejected samples' penalty is weighed first, by the estimate of pi_old's contradiction share
        log_weights = sequence_log_weights(rollout)
        contradiction = self.contradiction.observe(rollout.turns, log_weights, self._where())
        scores = clip_scores(self.contradiction.shaped(rollout.turns, rollout.batch.scores), ppo.reward_clip)
        if ppo.standardize_rewards:
            scores = standardize_scores(scores)
        kl_coef = self.kl_controller.value
        rewards = kl_penalty_rewards(rollout.kl, scores, mask, kl_coef)
        advantages, returns = gae(rewards, rollout.values, mask, ppo.gamma, ppo.lam)
        rollout.returns = returns
        # Whitening needs a variance: a rollout of a single token is left as it is.
        whiten = ppo.whiten_advantages and int(mask.sum()) >= 2
        rollout.advantages = masked_whiten(advantages, mask) if whiten else advantages
        rollout.weights, is_stats = truncated_importance_weights(
            rollout.old_logprobs, rollout.batch.behaviour_logprobs, mask, ppo.is_cap
        )
        targets = {"advantages": rollout.advantages, "returns": returns, "importance weights": rollout.weights}
        require_finite_masked(targets, mask, self._where())
        stats = advantage_stats(rollout, scores, kl_coef)
        self.kl_controller.update(stats["kl_per_turn"], len(rollout.turns))
        return {**stats, **is_stats, **contradiction}

    def _where(self) -> str:
        return f"iteration {self.iteration + 1}"

    def _check_rollout(self, rollout: Rollout) -> None:
        """Refuse a non-finite reward (raw: clipping would hide an infinity) or model output before GAE uses it."""
        scores = [float(s) for s in rollout.batch.scores]
        require_finite_rewards([t.key for t in rollout.turns], scores, self._where())
        outputs = {
            "pi_old log-probs": rollout.old_logprobs,
            "reference log-probs": rollout.ref_logprobs,
            "values": rollout.values,
            "KL to the reference": rollout.kl,
            "behaviour log-probs": rollout.batch.behaviour_logprobs,
        }
        require_finite_masked(outputs, rollout.batch.mask, self._where())

    def _step(self, params: list[torch.nn.Parameter], sums: list[float], where: str) -> float:
        """Clip and apply the gradient unless the loss or its norm is not finite (all-reduced: every rank agrees)."""
        ppo = self.config.ppo
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm))
        monitored = {"policy loss": sums[0], "value loss": sums[1], "entropy": sums[2], "gradient norm": grad_norm}
        if not all(math.isfinite(v) for v in monitored.values()):
            self.optimizer.zero_grad(set_to_none=True)  # dropped, never applied
            require_finite_numbers(monitored, where, "the optimizer step was skipped and the weights are unchanged")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        return grad_norm

    # -- stage 3 ------------------------------------------------------------------------------
    def update(self, rollout: Rollout) -> dict[str, float]:
        ppo, iteration = self.config.ppo, self.iteration
        model = self.ddp if self.ddp is not None else self.policy.module
        params = [p for _, p in self.policy.trainable_parameters()]
        totals = dict.fromkeys(
            ("policy_loss", "value_loss", "entropy", "clip_frac", "value_clip_frac", "approx_kl", "tokens"), 0.0
        )
        grad_norms: list[float] = []
        prompts = [t.prompt_ids for t in rollout.turns]
        epochs_run, stopped = 0, False
        for epoch in range(ppo.epochs):
            rng = np.random.default_rng([self.config.seed, iteration, epoch, 1])
            order = [int(i) for i in rng.permutation(len(rollout.turns))]
            if ppo.minibatch_order == "by_prefix":
                order = prefixes_together(order, prompts, rng)
            epochs_run += 1
            minibatches = list(_chunks(order, ppo.minibatch_turns))
            for number, minibatch in enumerate(self._bar(minibatches, f"epoch {epoch}"), start=1):
                tokens = float(rollout.batch.mask[minibatch].sum())
                mine = minibatch[self.dist.rank :: self.dist.world]
                sums = [0.0] * 6
                micros = group_by_prefix(mine, prompts, ppo.micro_batch_turns)
                for k, micro in enumerate(micros):
                    last = k == len(micros) - 1
                    sync = nullcontext() if last or self.ddp is None else self.ddp.no_sync()
                    with sync:
                        part = self._micro_step(model, rollout, micro, tokens)
                    sums = [a + b for a, b in zip(sums, part, strict=True)]
                sums = self.dist.sum_all(sums)
                grad_norms.append(self._step(params, sums, f"{self._where()}, epoch {epoch + 1}, minibatch {number}"))
                for key, value in zip(
                    ("policy_loss", "value_loss", "entropy", "clip_frac", "value_clip_frac", "approx_kl"),
                    sums,
                    strict=True,
                ):
                    totals[key] += value
                totals["tokens"] += tokens
                if ppo.kl_budget is not None and sums[5] / tokens > ppo.kl_budget:
                    stopped = True  # the same all-reduced value on every rank: they stop together
                    break
            if stopped:
                break
        n = max(totals.pop("tokens"), 1.0)
        out = {key: value / n for key, value in totals.items()}
        out.update(
            epochs_run=float(epochs_run),
            early_stopped=float(stopped),
            grad_norm=float(np.mean(grad_norms)),
            learning_rate=float(self.optimizer.param_groups[0]["lr"]),
        )
        return out

    def _micro_step(self, model: torch.nn.Module, rollout: Rollout, rows: list[int], tokens: float) -> list[float]:
        """Forward/backward one micro-batch; returns token sums of the monitored quantities."""
        ppo = self.config.ppo
        batch = collate([rollout.turns[i] for i in rows], self.pad_id)
        width = batch.mask.shape[1]
        assert rollout.advantages is not None and rollout.returns is not None and rollout.weights is not None

        def take(full: torch.Tensor) -> torch.Tensor:
            return full[rows, :width]

        mask = batch.mask
        logprobs, values, entropy = model(*batch_inputs(batch), entropy_grad=ppo.entropy_coef != 0)
        old = take(rollout.old_logprobs)
        policy_loss, clipped = clipped_policy_loss(
            logprobs, old, take(rollout.advantages), ppo.clip_eps, take(rollout.weights)
        )
        value_loss, value_clipped = clipped_value_loss(
            values, take(rollout.values), take(rollout.returns), ppo.value_clip_eps
        )
        per_token = policy_loss + ppo.value_coef * value_loss - ppo.entropy_coef * entropy
        # Sum over this rank's tokens / tokens of the global minibatch; DDP averages over ranks, so
        # scale by the world size to get the 1-process gradient.
        loss = masked_sum(per_token, mask) / tokens * self.dist.world
        loss.backward()
        detached = logprobs.detach()
        return [
            float(masked_sum(policy_loss.detach(), mask)),
            float(masked_sum(value_loss.detach(), mask)),
            float(masked_sum(entropy.detach(), mask)),
            float(masked_sum(clipped.float(), mask)),
            float(masked_sum(value_clipped.float(), mask)),
            float(masked_sum(approx_kl(detached, old), mask)),
        ]

    # -- one iteration ------------------------------------------------------------------------
    def run_iteration(self) -> dict[str, Any]:
        started = time.perf_counter()
        timer = self.timer
        turns = self.rollout_turns(self.iteration)
        keys = self.rollout_indices(self.iteration)
        if self.fresh is not None:
            with timer.phase("sampling"):
                turns = self.fresh.sample(self.policy, turns, self.iteration)
        with timer.phase("scoring"):
            rollout = self.score(turns, keys)  # fresh samples: the scorer keeps nothing (no reference cache)
        if self.fresh is not None:
            # The responses were drawn from pi_old itself: it is the behaviour, every importance weight is 1.
            rollout.batch.behaviour_logprobs = rollout.old_logprobs.clone()
            rollout.batch.logged_full_logprobs = rollout.old_logprobs.clone()
        with timer.phase("advantages"):
            stats = self.advantages(rollout)
        with timer.phase("update"):
            stats.update(self.update(rollout))
            require_finite_tensors(self.policy.trainable_parameters(), self._where(), "parameters after the update")
        self.turn_credit.extend(turn_credit_rows(rollout, self.iteration + 1))
        elapsed = time.perf_counter() - started
        phases = timer.take_iteration()
        sequence_tokens = float(rollout.batch.attention_mask.sum())
        self.iteration += 1
        record: dict[str, Any] = {
            "iteration": self.iteration,
            "turns": len(turns),
            "optimizer_steps": self.updates,  # so far: runs with other minibatch sizes compare by it
            "reference_kept_turns": self.scorer.kept_rows,
            **stats,
            "time_s": elapsed,
            "phases_s": phases,
            **({"sampling_s": phases["sampling"], **self.fresh.last_stats} if self.fresh is not None else {}),
            "sequence_tokens_per_s": sequence_tokens * stats["epochs_run"] / elapsed,
        }
        resident = resident_gb()
        if resident is not None:  # a process whose memory grows shows it here (docs/TRAINING.md)
            record["resident_gb"] = resident
        self.metrics.append(record)
        return record

    def kl_stop_reached(self) -> bool:
        """Whether ``ppo.kl_stop`` ends the run here: the KL per turn to the reference, averaged over
        the last ``kl_stop_window`` iterations, reached it (the same on every rank: the rollout is
        gathered). Read from the metrics, so a resumed run decides as the uninterrupted one did."""
        stop, window = self.config.ppo.kl_stop, self.config.ppo.kl_stop_window
        if stop is None or len(self.metrics) < window:
            return False
        return sum(float(r["kl_per_turn"]) for r in self.metrics[-window:]) / window >= stop

    def turns_read(self) -> tuple[int, float]:
        """(how many distinct training turns the iterations so far have read, how many passes over
        them). A run that ``kl_stop`` ends inside its first pass never reads the rest."""
        picked = self.iteration * self.config.ppo.rollout_turns
        return min(picked, len(self.turns)), picked / len(self.turns) if self.turns else 0.0

    def finished(self) -> bool:
        """No iteration is left: all ``total_iterations`` ran, or ``ppo.kl_stop`` was reached."""
        return self.iteration >= self.total_iterations or self.kl_stop_reached()

    def _bar(self, items: list[Any], desc: str) -> Any:
        if not self.progress or len(items) < 2:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)

    # -- checkpoint state ---------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: param for name, param in self.policy.trainable_parameters()}

    def loop_state(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "kl_controller": self.kl_controller.state_dict(),
            "contradiction": self.contradiction.state_dict(),
            "metrics": self.metrics,
            "turn_credit": self.turn_credit,
        }

    def restore(
        self, trainable: dict[str, torch.Tensor], optimizer: dict[str, Any], state: dict[str, Any], where: str
    ) -> None:
        copy_trainable(self.policy, trainable, where)
        self.optimizer.load_state_dict(optimizer)
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.iteration = int(state["iteration"])
        self.updates = int(state["updates"])
        self.metrics = list(state["metrics"])
        self.turn_credit = list(state.get("turn_credit", []))  # absent from checkpoints written before it
        if "contradiction" in state:  # absent from checkpoints written before it (their multiplier stayed 1)
            self.contradiction.load_state_dict(state["contradiction"])
