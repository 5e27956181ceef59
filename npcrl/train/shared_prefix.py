"""Run a batch's shared prompt prefix through the decoder once instead of once per row.

Every turn of one NPC starts with the same persona prefix (system turn, lore, the user header:
~620 of ~830 tokens for the shipped personas), so most of a training forward pass recomputes the
same keys and values. ``decoder_hidden`` runs the rows' longest common prefix as a single row,
expands its KV cache to the batch (a view, no copy) and runs only the rows' own suffixes. This is
exact, not an approximation: causal attention means the prefix's keys and values do not depend on
what follows, and gradients flow back through the expanded cache into the one prefix pass (summed
over the rows), so values, log-probs and gradients equal the full pass up to float rounding.

``group_by_prefix`` orders a batch's rows so that micro-batches hold rows that share a prefix;
``prefixes_together`` orders a whole rollout so that minibatches do too (``ppo.minibatch_order``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from npcrl.train.shapes import whole_blocks

if TYPE_CHECKING:
    from npcrl.train.prefix_cache import PrefixCache

MIN_SHARED_PREFIX = 32
"""shorter common prefixes are run with the rows (a second pass costs more than it saves)"""


def worth_sharing(common: int) -> int:
    """``common`` prefix tokens if sharing them pays (at least ``MIN_SHARED_PREFIX``), else 0."""
    return common if common >= MIN_SHARED_PREFIX else 0


def shared_prefix_length(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, limit: int, blocks: bool = False
) -> int:
    """Tokens at the start that every row holds alike (real tokens only), at most ``limit``; 0 if
    fewer than ``MIN_SHARED_PREFIX`` or a single row. ``blocks``: only whole blocks of
    ``shapes.SEQUENCE_MULTIPLE`` tokens (``model.pad_shapes``)."""
    if input_ids.shape[0] < 2 or limit < MIN_SHARED_PREFIX:
        return 0
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(dim=0)  # (L,)
    common = min(int(same.long().cumprod(dim=0).sum()), limit)
    return worth_sharing(whole_blocks(common) if blocks else common)


def decoder_hidden(
    decoder: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    limit: int,
    share_prefix: bool = True,
    prefixes: PrefixCache | None = None,
    blocks: bool = False,
) -> tuple[torch.Tensor, int]:
    """(last hidden states of positions ``offset:``, ``offset``) for right-padded (B, L) rows.

    ``limit`` caps the shared prefix: the caller needs the hidden states of every position from
    ``limit`` on (e.g. the first position that predicts a response token). ``prefixes`` keeps the
    shared prefixes' keys and values across calls (frozen weights only: ``prefix_cache.py``).
    ``blocks``: the shared prefix is whole blocks of ``shapes.SEQUENCE_MULTIPLE`` tokens.
    """
    shared = shared_prefix_length(input_ids, attention_mask, limit, blocks) if share_prefix else 0
    if shared == 0:
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state, 0
    rows = input_ids.shape[0]
    if prefixes is not None:
        cache = expanded_cache(decoder, prefixes.layers(decoder, input_ids[:1, :shared]), rows)
    else:
        cache = expanded_prefix_cache(decoder, input_ids[:1, :shared], rows)
    out = decoder(input_ids=input_ids[:, shared:], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    return out.last_hidden_state, shared


def expanded_prefix_cache(decoder: nn.Module, prefix_ids: torch.Tensor, rows: int) -> Any:
    """The KV cache of the (1, n) ``prefix_ids`` run once, expanded (a view, no copy) to ``rows`` rows."""
    prefix = decoder(input_ids=prefix_ids, use_cache=True).past_key_values
    return expanded_cache(decoder, [(layer.keys, layer.values) for layer in prefix.layers], rows)


def expanded_cache(decoder: nn.Module, layers: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> Any:
    """A KV cache of one row's per-layer (keys, values) expanded (a view, no copy) to ``rows`` rows."""
    from transformers.cache_utils import DynamicCache

    expanded = [(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1)) for keys, values in layers]
    config: Any = decoder.config  # a transformers config; nn.Module types attributes as Tensor | Module
    return DynamicCache(expanded, config=config)


def group_by_prefix(rows: Sequence[int], prompts: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """``rows`` cut into chunks of at most ``size``, each holding rows whose prompts (``prompts[row]``)
    share a prefix of at least ``MIN_SHARED_PREFIX`` tokens where the data allows it.

    Deterministic: rows are ordered by prompt, and runs of prompts sharing a prefix with the run's
    first are chunked separately, so a chunk never straddles two personas.
    """
    ordered = sorted(rows, key=lambda r: (tuple(prompts[r]), r))
    runs: list[list[int]] = []
    for row in ordered:
        if runs and _common(prompts[runs[-1][0]], prompts[row]) >= MIN_SHARED_PREFIX:
            runs[-1].append(row)
        else:
            runs.append([row])
    return [run[i : i + size] for run in runs for i in range(0, len(run), size)]


def prefixes_together(order: Sequence[int], prompts: Sequence[Sequence[int]], rng: np.random.Generator) -> list[int]:
    """``order``'s rows with the rows that share a prompt prefix (one persona) next to each other:
    the groups in a random order drawn from ``rng``, each group's rows in their order in ``order``.
    Cut into minibatches, a minibatch then holds as few groups as its place in the order allows."""
    position = {row: i for i, row in enumerate(order)}
    groups = [sorted(group, key=position.__getitem__) for group in group_by_prefix(order, prompts, max(len(order), 1))]
    return [row for k in rng.permutation(len(groups)) for row in groups[int(k)]]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b), MIN_SHARED_PREFIX)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
