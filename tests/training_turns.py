"""``TrainingTurn``s built from token ids, for the trainer's tests on tiny models."""

from __future__ import annotations

import dataclasses

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


def line_turn(ids: list[int], text: str = "", rejected: int = 0, **fields: object) -> TrainingTurn:
    """Blacksmith conversation "c"'s first turn answered with ``ids`` (``text`` as shown, or a
    rejected sample), each token with its own log-probs, so a cut can be checked token by token."""
    turn = TrainingTurn(
        conversation_id="c",
        turn_index=0,
        npc_id="blacksmith",
        bundle_id="b",
        prompt_ids=(1, 2),
        response_ids=tuple(ids),
        behaviour_logprobs=tuple(-0.1 * (i + 1) for i in range(len(ids))),
        full_logprobs=tuple(-0.2 * (i + 1) for i in range(len(ids))),
        temperature=0.8,
        sampler={},
        reward=1.0,
        text=text,
        rejected_sample=rejected,
    )
    return dataclasses.replace(turn, **fields)  # type: ignore[arg-type]
