"""Batched sampling from the torch policy, for on-policy rollouts.

HF ``generate`` answers one prompt at a time here (each turn has its own sampler settings and
seed), so every fresh line re-ran its whole ~700-token persona prompt and decoded alone.
``sample_responses`` answers a group of prompts together:

* the rows' longest common prompt prefix runs once, as one row, and its KV cache is expanded to
  the batch (``shared_prefix.expanded_prefix_cache``, as training passes do);
* the rows' own prompt suffixes are left-padded *after* the prefix (masked out, positions taken
  from the mask), then all rows decode one token per step together;
* each row draws its tokens with the game's own :class:`npcrl.runtime.sampler.Sampler`, seeded per row, so
  a row's line does not depend on which rows it was batched with (up to float rounding) and a
  turn's repetition penalty, temperature, top-k and top-p are those it was logged with;
* only the last position's hidden state goes through the LM head (a 49k-word vocabulary over a
  whole prompt costs about as much as the transformer itself).

A row stops after an EOS token (kept, as the game's logs keep it) or at its own token limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from npcrl.runtime.kvcache import common_prefix_length as pair_prefix_length
from npcrl.runtime.sampler import Sampler, SamplerConfig
from npcrl.train.shared_prefix import expanded_prefix_cache, worth_sharing


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with alike; at most the shortest prompt's length minus one (each
    row needs a token of its own to predict from), and 0 where ``shared_prefix.worth_sharing`` says
    sharing does not pay (the rule ``shared_prefix_length`` applies to padded tensors)."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    return worth_sharing(min(min(pair_prefix_length(prompts[0], p) for p in prompts[1:]), limit))


@torch.no_grad()
def sample_responses(
    decoder: nn.Module,
    lm_head: nn.Module,
    prompts: Sequence[Sequence[int]],
    samplers: Sequence[SamplerConfig],
    limits: Sequence[int],
    eos_ids: Iterable[int],
    pad_id: int,
) -> list[list[int]]:
    """One sampled response per prompt (token ids, EOS kept), the rows decoded together.

    ``decoder`` is the transformer body (hidden states after the final norm), ``lm_head`` maps them
    to logits; ``samplers[i]`` (with its seed) and ``limits[i]`` belong to row ``i``.
    """
    rows = len(prompts)
    if not (len(samplers) == len(limits) == rows):
        raise ValueError(f"{rows} prompts but {len(samplers)} sampler configs and {len(limits)} limits")
    if rows == 0:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    stops = set(eos_ids)
    shared = common_prefix_length(prompts)
    suffixes = [list(p[shared:]) for p in prompts]
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, suffix in enumerate(suffixes):
        input_ids[i, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        mask[i, shared + width - len(suffix) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long)
    cache = expanded_prefix_cache(decoder, prefix, rows) if shared else None

    draws = [Sampler(config) for config in samplers]
    contexts = [np.asarray(p, dtype=np.int64) for p in prompts]
    responses: list[list[int]] = [[] for _ in range(rows)]
    active = [limit > 0 for limit in limits]
    step_ids, step_positions = input_ids, positions[:, shared:]
    while any(active):
        out = decoder(
            input_ids=step_ids, attention_mask=mask, position_ids=step_positions, past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        logits = lm_head(out.last_hidden_state[:, -1]).float().numpy()  # (rows, V)
        next_ids = torch.full((rows, 1), pad_id, dtype=torch.long)
        for i in range(rows):
            if not active[i]:
                continue
            token = draws[i].sample(logits[i], contexts[i]).token_id
            responses[i].append(token)
            contexts[i] = np.append(contexts[i], token)
            next_ids[i, 0] = token
            active[i] = token not in stops and len(responses[i]) < limits[i]
        # Finished rows keep stepping (their outputs are ignored) so the batch stays rectangular.
        step_ids = next_ids
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
    return responses
