"""Metrics that need the models themselves (onnxruntime only, no torch).

- ``line_kl``: how far a candidate bundle moved from a reference bundle on the lines players
  actually saw: the exact KL over the full vocabulary at every response position of logged turns,
  summed over a line ("KL to the reference, nats per line", the quantity PPO's KL penalty bounds).
- ``perplexity``: how well a bundle still predicts plain in-character text it never saw
  (``heldout_persona_texts``), a guard against a fine-tune that games engagement and loses the
  persona's language.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from importlib.resources import files

import numpy as np

from npcrl.errors import BundleError, LogFormatError
from npcrl.playlog import NpcTurn
from npcrl.runtime.model import OnnxCausalLM

HELDOUT_TEXT_RESOURCE = "data/eval/heldout_persona_text.txt"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax at temperature 1, in float64: the KL of two near-equal distributions is
    a difference of near-equal log-probs, which float32 rounding would swamp."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p || q) of each row, from log-probs (..., V): ``sum_v p_v (log p_v - log q_v)``."""
    return (np.exp(logp) * (logp - logq)).sum(axis=-1)


def _bundle_dir(model: OnnxCausalLM) -> str:
    return str(model.bundle.root)


def check_same_vocabulary(model: OnnxCausalLM, reference: OnnxCausalLM) -> None:
    """Refuse two bundles whose token ids mean different things: a KL between their next-token
    distributions would compare unrelated tokens. Both the logit width and the tokenizer's
    token-to-id map must agree."""
    if model.vocab_size != reference.vocab_size:
        raise BundleError(
            f"{_bundle_dir(model)} and {_bundle_dir(reference)} do not share a vocabulary: "
            f"vocab_size {model.vocab_size} vs {reference.vocab_size}"
        )
    ours = model.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    theirs = reference.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    if ours != theirs:
        differing = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
        raise BundleError(
            f"{_bundle_dir(model)} and {_bundle_dir(reference)} do not share a vocabulary: their tokenizers map "
            f"{len(ours)} and {len(theirs)} tokens, differing e.g. at (token, id) {differing}"
        )


def response_logprobs(model: OnnxCausalLM, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced log-probs (R, V) of the next-token distributions at the R response positions:
    row t is the distribution that chose ``response_ids[t]`` after the prompt and ``response_ids[:t]``."""
    if not prompt_ids or not response_ids:
        raise ValueError("response_logprobs needs a non-empty prompt and response")
    sequence = [*prompt_ids, *response_ids]
    # The last token's logits predict past the line, so it is not fed.
    logits = model.forward(sequence[:-1], model.new_cache(), all_logits=True)  # (P+R-1, V)
    return log_softmax(logits[len(prompt_ids) - 1 :])  # (R, V)


def turn_kl(
    model: OnnxCausalLM, reference: OnnxCausalLM, prompt_ids: Sequence[int], response_ids: Sequence[int]
) -> float:
    """``sum_t KL(p_model(.|s_t) || p_ref(.|s_t))`` over the response positions of one line, in nats."""
    logp = response_logprobs(model, prompt_ids, response_ids)
    logq = response_logprobs(reference, prompt_ids, response_ids)
    return float(kl_rows(logp, logq).sum())


def line_kl(
    model: OnnxCausalLM, reference: OnnxCausalLM, turns: Iterable[NpcTurn], max_turns: int | None = None
) -> float:
    """KL to the reference, nats per line: the mean over logged NPC turns of
    ``sum_t KL(p_model(.|s_t) || p_ref(.|s_t))`` over the full vocabulary at each response position.

    Each turn's ``prompt_ids + response_ids`` is teacher-forced through both bundles (one forward
    each, all logits, temperature 1). Turns without response tokens (a generation that failed) are
    skipped; ``max_turns`` caps how many turns are scored (the first ones), for a quick estimate."""
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be >= 1 or None, got {max_turns}")
    check_same_vocabulary(model, reference)
    per_turn: list[float] = []
    for turn in turns:
        if max_turns is not None and len(per_turn) >= max_turns:
            break
        if not turn.response_ids or not turn.prompt_ids:
            continue
        per_turn.append(turn_kl(model, reference, turn.prompt_ids, turn.response_ids))
    if not per_turn:
        raise LogFormatError("line_kl: no logged NPC turn with prompt and response tokens to score")
    return math.fsum(per_turn) / len(per_turn)


def text_nll(model: OnnxCausalLM, text: str) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, tokens predicted) of one plain text: encoded with the
    bundle tokenizer (no chat template, no special tokens added), tokens 2..n predicted from the
    ones before. A text of fewer than two tokens predicts nothing: (0.0, 0)."""
    ids = model.tokenizer.encode(text)
    if len(ids) < 2:
        return 0.0, 0
    logp = log_softmax(model.forward(ids[:-1], model.new_cache(), all_logits=True))  # (n-1, V)
    targets = np.asarray(ids[1:], dtype=np.int64)
    return float(-logp[np.arange(len(targets)), targets].sum()), len(targets)


def perplexity(model: OnnxCausalLM, texts: Iterable[str]) -> float:
    """Token-level perplexity of plain texts: ``exp(total NLL / total predicted tokens)``, every
    token of every text weighted equally (see ``text_nll`` for what is predicted)."""
    total_nll = 0.0
    total_tokens = 0
    for text in texts:
        nll, count = text_nll(model, text)
        total_nll += nll
        total_tokens += count
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    return math.exp(total_nll / total_tokens)


def heldout_persona_texts() -> list[str]:
    """In-character lines for the built-in personas that appear nowhere in their cards (held out),
    one per line of ``npcrl/data/eval/heldout_persona_text.txt``; blank and ``#`` lines skipped."""
    text = files("npcrl").joinpath(HELDOUT_TEXT_RESOURCE).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
