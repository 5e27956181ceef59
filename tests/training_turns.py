"""A ``TrainingTurn`` built from token ids, for the trainer's tests on tiny models."""

from __future__ import annotations

from npcrl.train.data import TrainingTurn

VOCAB = 60  # token ids drawn below this (the tiny models' vocabularies are larger)


def make_turn(prompt: list[int], response: list[int], key: int) -> TrainingTurn:
    return TrainingTurn(
        conversation_id=f"c{key}",
        turn_index=0,
        npc_id="npc",
        bundle_id="b",
        prompt_ids=tuple(prompt),
        response_ids=tuple(response),
        behaviour_logprobs=tuple(-1.0 for _ in response),
        full_logprobs=tuple(-1.0 for _ in response),
        temperature=0.8,
        sampler={},
        reward=float(key % 3) - 1.0,
    )
