"""On-policy rollouts for PPO with a reward model (``data.mode = "reward_model"``).

Each iteration takes the same logged turns the logged mode would (the trainer's seeded stream
over the training turns) but keeps only their prompts and sampler settings: the *current* policy
answers each prompt (the game's sampler with the turn's temperature, top-k, top-p and repetition
penalty, up to its max_new_tokens or ``reward_model.max_new_tokens``), and the reward model
scores the answer. Prompts that share a persona prefix are answered together,
``ppo.micro_batch_turns`` at a time (``sampling.sample_responses``: the prefix runs once, the
rows decode as one batch). The answers were drawn from pi_old itself, so the trainer sets the
behaviour log-probs to pi_old's and every importance weight is 1; the KL penalty to the
reference, GAE, clipping and the update are the logged mode's, unchanged.

Like TRL's PPO, the sampler's top-k/top-p truncation is not corrected for: the policy gradient is
that of the temperature-scaled softmax the tokens were truncated from. Generation stops at an EOS
token (kept, as the game's logs keep it) or at the length cap; the game's stop strings are not
applied. With ``data.train_tokens = "shown"`` each fresh line is cut to the tokens the agent would
have shown of it (``npcrl.train.shown_tokens``: its post-processing drops an unfinished last
sentence) before it is scored and trained on, as the logged lines the reward model learned from
were; otherwise every sampled token is scored and trained on.

A fresh line that contradicts the persona card of its conversation (``agent.consistency``, on the
line as the agent would post-process it; the cards given: in ``npcrl train`` the shipped ones and
those of ``--personas``, in ``npcrl loop`` the cards its NPCs played)
gets the reward spec's ``contradiction_reward`` instead of the reward model's score: the agent
would never have shown it (``data.penalize_card_contradictions``).

With ``reward_model.repetition_penalty`` the reward is the score minus that times the share of the
fresh line's word 3-grams the NPC already said earlier in the logged conversation (its earlier
logged lines, which the prompt holds; ``evaluation.metrics.repeated_share``).

Under torchrun each rank answers its share of the prompts and the answers are all-gathered, so
every rank holds the same rollout (as for scoring in ``ppo.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from npcrl.agent.consistency import card_contradictions
from npcrl.agent.persona import Persona
from npcrl.agent.postprocess import postprocess_line
from npcrl.evaluation.metrics import repeated_share, word_tokens
from npcrl.runtime.sampler import SamplerConfig
from npcrl.train.config import TrainConfig
from npcrl.train.data import TrainingTurn
from npcrl.train.distributed import Dist
from npcrl.train.finite import require_finite_rewards
from npcrl.train.policy import Policy, decoder_of, lm_head_of
from npcrl.train.sampling import sample_responses
from npcrl.train.shared_prefix import group_by_prefix
from npcrl.train.shown_tokens import SampleCutter


class RewardScorer(Protocol):
    """What scores fresh answers: ``RewardModel``, or any object with its ``predict_sequences``."""

    def predict_sequences(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], batch: int = 8
    ) -> list[float]: ...


class FreshRollouts:
    """Replaces logged responses and rewards by the current policy's answers and their predicted reward."""

    def __init__(
        self,
        reward_model: RewardScorer,
        eos_ids: Iterable[int],
        config: TrainConfig,
        dist: Dist,
        logged_lines: Mapping[str, Mapping[int, Sequence[str]]] | None = None,
        cards: Mapping[str, Persona] | None = None,
        contradiction_reward: float = -1.0,
        cutter: SampleCutter | None = None,
    ) -> None:
        """``logged_lines``: conversation id -> turn index -> the words of the NPC's logged line (see
        ``logged_lines``): what the repeated share of each fresh line is measured against.
        ``cards``: persona hash -> card, the cards fresh lines are checked against (none: no check);
        a line that contradicts its card is rewarded ``contradiction_reward``. ``cutter``: cuts each
        fresh line to what the agent would have shown of it (none: every sampled token is kept)."""
        self.reward_model = reward_model
        self.eos_ids = tuple(eos_ids)
        self.config = config
        self.dist = dist
        self.logged_lines = logged_lines or {}
        self.cards = cards or {}
        self.contradiction_reward = contradiction_reward
        self.cutter = cutter
        self.last_stats: dict[str, float] = {}
        """means over the last rollout: the reward model's score, the repeated share of the lines and
        the share of lines that contradicted their card (and, with a cutter, the share of sampled
        tokens the lines kept)"""

    def contradicts_card(self, turn: TrainingTurn, text: str) -> bool:
        """Does ``text``, answering ``turn``, contradict its conversation's persona card (if known)?"""
        persona = self.cards.get(turn.persona_hash)
        if persona is None:
            return False
        return bool(card_contradictions(postprocess_line(text, npc_name=persona.name), persona))

    def earlier_words(self, turn: TrainingTurn) -> list[Sequence[str]]:
        """Words of the NPC's logged lines before ``turn`` in its conversation."""
        lines = self.logged_lines.get(turn.conversation_id, {})
        return [lines[index] for index in sorted(lines) if index < turn.turn_index]

    def sample_seed(self, iteration: int, row: int) -> int:
        """The generation seed of a rollout row: a function of the run's seed, iteration and row only
        (so a resumed run samples what the uninterrupted one did)."""
        return int(np.random.default_rng([self.config.seed, iteration, row, 3]).integers(2**31))

    def answer(
        self, policy: Policy, turns: list[TrainingTurn], rows: list[int], iteration: int
    ) -> dict[int, list[int]]:
        """Row -> the current policy's response to that turn's prompt, with the turn's sampler and a
        seed of the iteration and row; prompts sharing a prefix are answered together."""
        prompts = [turn.prompt_ids for turn in turns]
        lm = policy.module.lm
        responses: dict[int, list[int]] = {}
        for group in group_by_prefix(rows, prompts, self.config.ppo.micro_batch_turns):
            samplers, limits = [], []
            for i in group:
                sampler = SamplerConfig.from_dict(turns[i].sampler)
                samplers.append(dataclasses.replace(sampler, seed=self.sample_seed(iteration, i)))
                limits.append(self.config.reward_model.max_new_tokens or sampler.max_new_tokens)
            lines = sample_responses(
                decoder_of(lm),
                lm_head_of(lm),
                [prompts[i] for i in group],
                samplers,
                limits,
                self.eos_ids,
                policy.tokenizer.pad_token_id,
            )
            responses.update(zip(group, lines, strict=True))
        return responses

    def cut_to_shown(self, turns: list[TrainingTurn], responses: dict[int, list[int]]) -> float:
        """Cut each row's response in place to what the agent would have shown of it (a line whose
        shown text is not found stays whole); the share of sampled tokens kept, over every rank's rows."""
        assert self.cutter is not None
        sampled = kept = 0
        for i, ids in responses.items():
            turn = turns[i]
            card = self.cards.get(turn.persona_hash)
            count = self.cutter.count(ids, card.name if card is not None else self.cutter.name_of(turn.npc_id))
            sampled += len(ids)
            responses[i] = ids[: count if count is not None else len(ids)]
            kept += len(responses[i])
        kept_everywhere, sampled_everywhere = self.dist.sum_all([kept, sampled])
        return kept_everywhere / max(sampled_everywhere, 1)

    def sample(self, policy: Policy, turns: list[TrainingTurn], iteration: int) -> list[TrainingTurn]:
        """Turns with the prompts of ``turns``, fresh responses, and the reward model's scores as rewards.

        The behaviour log-probs are placeholders (zeros): the trainer replaces them by pi_old's once
        it has scored the rollout.
        """
        mine = list(range(self.dist.rank, len(turns), self.dist.world))
        responses = self.answer(policy, turns, mine, iteration)
        kept_share = self.cut_to_shown(turns, responses) if self.cutter is not None else 1.0
        scores = self.reward_model.predict_sequences(
            [turns[i].prompt_ids for i in mine], [responses[i] for i in mine], self.config.ppo.micro_batch_turns
        )
        penalty = self.config.reward_model.repetition_penalty
        answered = {}
        for i, score in zip(mine, scores, strict=True):
            # Measured with the penalty off too: the share is the run's repetition monitor.
            text = policy.tokenizer.decode(responses[i], skip_special_tokens=True)
            share = repeated_share(word_tokens(text), self.earlier_words(turns[i]))
            answered[i] = (responses[i], float(score), share, self.contradicts_card(turns[i], text))
        for part in self.dist.all_gather_objects(answered):
            answered.update(part)
        # Checked on the gathered scores, so every rank refuses together; a NaN reward would reach
        # every weight through GAE and the update.
        scores_of_all = [answered[i][1] for i in range(len(turns))]
        require_finite_rewards([t.key for t in turns], scores_of_all, f"iteration {iteration + 1}", "predicted reward")
        fresh = []
        for i, turn in enumerate(turns):
            ids, score, share, contradicts = answered[i]
            zeros = (0.0,) * len(ids)
            fresh.append(
                dataclasses.replace(
                    turn,
                    response_ids=tuple(ids),
                    behaviour_logprobs=zeros,
                    full_logprobs=zeros,
                    reward=self.contradiction_reward if contradicts else score - penalty * share,
                )
            )
        n = max(len(turns), 1)
        self.last_stats = {
            "reward_model_score_mean": sum(answered[i][1] for i in range(len(turns))) / n,
            "repeated_share_mean": sum(answered[i][2] for i in range(len(turns))) / n,
            "card_contradiction_share": sum(answered[i][3] for i in range(len(turns))) / n,
        }
        if self.cutter is not None:
            self.last_stats["shown_token_share"] = kept_share
        return fresh


def logged_lines(turns: Iterable[TrainingTurn], tokenizer: Any) -> dict[str, dict[int, list[str]]]:
    """conversation id -> turn index -> words of the logged NPC line, over every loaded turn (train and
    holdout); decoded once, since every iteration's fresh lines are compared with them."""
    lines: dict[str, dict[int, list[str]]] = {}
    for turn in turns:
        text = tokenizer.decode(list(turn.response_ids), skip_special_tokens=True)
        lines.setdefault(turn.conversation_id, {})[turn.turn_index] = word_tokens(text)
    return lines
