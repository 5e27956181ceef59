"""The game sampler's behaviour log-probs, recomputed in torch for a whole response at once.

Off-policy evaluation scores a logged response under a new model *as it would be deployed*: the
same repetition penalty, temperature, top-k and top-p as :class:`npcrl.runtime.sampler.Sampler`, over the
new model's logits. This module gives that sampler's ``logprob`` at every step of a response,
vectorised over the steps and in float64 like the sampler.

The truncated sets follow the sampler exactly: ids ranked by a higher value first, then a lower
id; top-p keeps the smallest prefix of that ranking whose mass reaches ``top_p`` (all of it if
rounding falls short), measured after top-k's renormalisation when both are set. Only the ranked
*values* are needed: the cut depends on them alone, and the ids tied with the last kept value are
kept lowest id first, as many as the cut leaves room for.

Each fresh (T, V) float64 tensor is a 50 MB allocation at T=128, V=50k, so the work is one
float64 copy of the logits, modified in place, plus reductions and (T, k)-sized rankings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from npcrl.runtime.sampler import SamplerConfig

# Top-p without top-k ranks this many best values per step first, then the whole vocabulary for
# the steps whose nucleus they do not reach (a trained LM's nucleus usually fits the first pass).
_TOP_P_CANDIDATES = 256


@torch.no_grad()
def sampler_logprobs(
    logits: torch.Tensor,
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    sampler: SamplerConfig,
) -> torch.Tensor:
    """Log-prob of each response token under the distribution ``sampler`` would draw it from.

    ``logits`` is (T, V): row t holds the model's raw next-token logits before ``response_ids[t]``.
    Step t's context, read by the repetition penalty, is ``prompt_ids + response_ids[:t]``, as at
    game time. Returns float64 (T,) on the logits' device, without gradient (a behaviour
    probability for evaluation, not a training objective): ``-inf`` for a token cut by top-k or
    top-p; greedy configs give ``0.0`` for the argmax (ties to the lowest id), ``-inf`` otherwise.
    """
    steps, vocab = _check_logits(logits, len(response_ids))
    prompt = _as_ids("prompt_ids", prompt_ids, vocab, logits.device)
    tokens = _as_ids("response_ids", response_ids, vocab, logits.device)
    if steps == 0:
        return torch.empty(0, dtype=torch.float64, device=logits.device)

    z = logits.detach().to(torch.float64, copy=True)  # (T, V), modified in place below
    if sampler.repetition_penalty != 1.0:
        _penalise_(z, prompt, tokens, sampler.repetition_penalty)
    if sampler.greedy:
        best = z.argmax(dim=-1)  # first maximum: ties go to the lowest id
        return z.new_zeros(steps).masked_fill_(tokens != best, -math.inf)
    # Penalty on the raw logits, then the temperature: the sampler's order, hence its numbers.
    if sampler.temperature != 1.0:
        z.div_(sampler.temperature)
    chosen = z.gather(-1, tokens[:, None]).squeeze(-1)  # (T,)
    if 0 < sampler.top_k < vocab or sampler.top_p < 1.0:
        return _truncated_logprobs(z, chosen, tokens, sampler.top_k, sampler.top_p)
    return chosen - torch.logsumexp(z, dim=-1)


def _check_logits(logits: torch.Tensor, steps: int) -> tuple[int, int]:
    """(T, V) of valid logits; the sampler's own refusals (NaN, +inf, a row of -inf) included."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a 2-D float tensor (T, V), got shape {tuple(logits.shape)} {logits.dtype}")
    if logits.shape[0] != steps:
        raise ValueError(f"logits has {logits.shape[0]} rows but response_ids has {steps} tokens")
    if logits.shape[1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension, got V = 0")
    if steps:
        top = logits.detach().amax(dim=-1)  # NaN propagates
        bad = torch.isnan(top) | torch.isposinf(top)
        if bool(bad.any()):
            raise ValueError(f"logits row {int(bad.nonzero()[0, 0])} contains NaN or +inf")
        empty = torch.isneginf(top)
        if bool(empty.any()):
            raise ValueError(f"logits row {int(empty.nonzero()[0, 0])} is all -inf")
    return int(logits.shape[0]), int(logits.shape[1])


def _as_ids(name: str, ids: Sequence[int], vocab: int, device: torch.device) -> torch.Tensor:
    """``ids`` as a 1-D int64 tensor on ``device``, every id inside the vocabulary."""
    if len(ids) == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    values = torch.as_tensor(ids)
    if values.ndim != 1 or values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
        raise ValueError(f"{name} must be a 1-D sequence of ints, got shape {tuple(values.shape)} {values.dtype}")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary of size {vocab}")
    return values.to(device=device, dtype=torch.int64)


def _penalise_(raw: torch.Tensor, prompt: torch.Tensor, tokens: torch.Tensor, penalty: float) -> None:
    """CTRL-style repetition penalty, in place, at every step over the ids in that step's context."""
    steps, vocab = raw.shape
    # The first step whose context holds each id: 0 for prompt ids, t + 1 for response token t,
    # ``steps`` (never) for the rest.
    first = torch.full((vocab,), steps, dtype=torch.int64, device=raw.device)
    first[prompt] = 0
    entered = torch.arange(1, steps + 1, device=raw.device)
    first.scatter_reduce_(0, tokens, entered, reduce="amin")
    # Only the columns of ids ever in context change: at most len(prompt) + T of them.
    ids = (first < steps).nonzero().squeeze(-1)  # (U,)
    if ids.numel() == 0:
        return
    seen = first[ids][None, :] <= torch.arange(steps, device=raw.device)[:, None]  # (T, U)
    columns = raw[:, ids]  # (T, U)
    penalised = torch.where(columns > 0, columns / penalty, columns * penalty)
    raw[:, ids] = torch.where(seen, penalised, columns)


def _truncated_logprobs(
    z: torch.Tensor, chosen: torch.Tensor, tokens: torch.Tensor, top_k: int, top_p: float
) -> torch.Tensor:
    """Log-probs renormalised over each step's top-k/top-p set; ``-inf`` outside it."""
    vocab = z.shape[1]
    if 0 < top_k < vocab:
        ranked = torch.topk(z, top_k, dim=-1).values  # (T, k), descending
        # As in the sampler (and HF), top-p measures the mass renormalised over the top k. Without
        # top-p all k stay, even where rounding brings their mass to 1 before the last one.
        size, boundary, normaliser, _ = _cut(
            ranked, torch.logsumexp(ranked, dim=-1), top_p if top_p < 1.0 else math.inf
        )
    else:
        lse = torch.logsumexp(z, dim=-1)  # (T,)
        count = min(_TOP_P_CANDIDATES, vocab)
        size, boundary, normaliser, reached = _cut(_ranked(z, count), lse, top_p)
        wide = (~reached).nonzero().squeeze(-1)
        if count < vocab and wide.numel():
            # A nucleus beyond the best candidates (a flat step): rank the whole vocabulary.
            cut = _cut(_ranked(z if wide.numel() == len(z) else z[wide], vocab), lse[wide], top_p)
            size[wide], boundary[wide], normaliser[wide] = cut[0], cut[1], cut[2]

    kept = chosen > boundary
    # A token tied with the boundary value is kept if few enough lower ids share that value.
    tied = (chosen == boundary).nonzero().squeeze(-1)
    if tied.numel():
        rows, last = z[tied], boundary[tied, None]  # (R, V), (R, 1)
        above = (rows > last).sum(dim=-1)
        lower = torch.arange(vocab, device=z.device)[None, :] < tokens[tied, None]  # (R, V)
        ties_before = ((rows == last) & lower).sum(dim=-1)
        kept[tied] = ties_before < size[tied] - above
    return torch.where(kept, chosen - normaliser, -math.inf)


def _cut(
    ranked: torch.Tensor, lse: torch.Tensor, top_p: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-p cut of each row of descending values ``ranked`` (R, m), normalised by ``lse`` (R,).

    Returns the kept count, the last kept value, the logsumexp of the kept values, and whether
    the row's mass reached ``top_p`` within these m values.
    """
    mass = (ranked - lse[:, None]).exp_().cumsum_(dim=-1)  # (R, m); never falls along a row
    # The smallest prefix whose mass reaches top_p; all of it if rounding falls short.
    size = torch.clamp((mass < top_p).sum(dim=-1) + 1, max=ranked.shape[1])
    last = (size - 1)[:, None]
    boundary = ranked.gather(-1, last).squeeze(-1)
    normaliser = lse + torch.log(mass.gather(-1, last).squeeze(-1))
    return size, boundary, normaliser, mass[:, -1] >= top_p


def _ranked(z: torch.Tensor, count: int) -> torch.Tensor:
    """Each row's ``count`` largest values, largest first."""
    if count < z.shape[-1]:
        return torch.topk(z, count, dim=-1).values
    if z.device.type == "cpu":
        # numpy sorts values alone, several times faster than torch.sort, which also orders ids.
        # Sorting the negated values ascending gives them largest first, without a reversed copy.
        values = np.negative(z.numpy())
        values.sort(axis=-1)
        return torch.from_numpy(np.negative(values, out=values))
    return torch.sort(z, dim=-1, descending=True).values
