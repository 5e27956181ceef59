"""Pad a pass's tensors to a few shapes, so the CPU's matrix kernels are built once, not per batch.

On CPU, torch's oneDNN backend builds (JIT-compiles) a kernel for every new matrix shape and keeps it
in a cache. Every micro-batch of training turns has its own sequence length, response length and
shared-prefix length, so a long run keeps building kernels and its memory keeps growing with them
(docs/TRAINING.md, "Known limits"). With ``model.pad_shapes`` a pass pads its sequences to a multiple
of ``SEQUENCE_MULTIPLE`` tokens, runs the shared prefix in whole blocks of that size, and pads its
response steps to a multiple of ``STEP_MULTIPLE`` before the output layer and value head.

All of it is exact up to float rounding: padded sequence positions are masked keys after every real
token (causal attention never reads them), prefix tokens left out of the shared pass run in each
row's own pass instead, and padded steps are cut off the output before anything reads it.
"""

from __future__ import annotations

from typing import Any

import torch

SEQUENCE_MULTIPLE = 32
"""tokens: sequence widths and shared prefixes come in multiples of this (so do the suffixes)"""
STEP_MULTIPLE = 8
"""response steps before the output layer: the (B, T, vocabulary) logits cost T times the vocabulary,
so a finer step than the sequence's keeps the padding's cost small"""


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_sequences(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, max_width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) rows widened to a multiple of ``SEQUENCE_MULTIPLE`` (masked pad tokens),
    but never past ``max_width``: a model with learned positions (GPT-2's ``n_positions``) has no
    position beyond it, padded or not."""
    width = round_up(input_ids.shape[1], SEQUENCE_MULTIPLE)
    if max_width is not None:
        width = max(min(width, max_width), input_ids.shape[1])
    extra = width - input_ids.shape[1]
    if extra == 0:
        return input_ids, attention_mask
    return (
        torch.nn.functional.pad(input_ids, (0, extra), value=0),
        torch.nn.functional.pad(attention_mask, (0, extra), value=0),
    )


def max_positions(model_config: Any) -> int | None:
    """The most positions a transformers config allows (GPT-2 ``n_positions``, Llama
    ``max_position_embeddings``); None if it names none."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def whole_blocks(prefix: int) -> int:
    """The longest run of whole ``SEQUENCE_MULTIPLE`` blocks within a shared prefix of ``prefix`` tokens."""
    return prefix // SEQUENCE_MULTIPLE * SEQUENCE_MULTIPLE


def pad_steps(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, H) states with T widened to a multiple of ``STEP_MULTIPLE`` (zeros); the caller cuts
    whatever it computes from them back to T steps."""
    extra = round_up(hidden.shape[1], STEP_MULTIPLE) - hidden.shape[1]
    return hidden if extra == 0 else torch.nn.functional.pad(hidden, (0, 0, 0, extra))
