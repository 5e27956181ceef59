"""Token sampling: repetition penalty, temperature, top-k and top-p over one step's logits.

Every sampled token carries two log-probs, because its two consumers need different numbers:

* ``logprob`` is the log-prob of the token under the distribution it was *actually drawn from*
  (after repetition penalty, temperature, top-k and top-p renormalisation). It is the behaviour
  policy's probability: importance weights and off-policy corrections are only unbiased with the
  exact sampling distribution. Greedy decoding is a point mass, so it is ``0.0``.
* ``full_logprob`` is ``log_softmax(raw_logits / T)[token]`` with the raw logits (before the
  penalty and any truncation) and ``T`` the temperature (1 when greedy). It is what the model
  itself assigns, i.e. what the trainer recomputes from its own forward pass (PPO ratios, KL to a
  reference); truncation would make it ``0`` or ``-inf`` in ways the trainer cannot reproduce.

Ties are broken deterministically: a higher logit first, then a lower token id.

Cost per step is a few O(V) vector passes: top-k/top-p rank candidates found by partition rather
than sorting the vocabulary, and the one vocabulary-wide exp (for the normaliser) runs in float32,
which numpy vectorises on CPUs without AVX-512 where float64 exp is scalar. Its relative error
(~1e-7) is below the rounding of the float32/float16 logits themselves; everything else, and all
log-prob arithmetic, is float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from npcrl.validate import ConfigValueError, check_number, check_optional

# Top-p without top-k ranks this many best candidates first (the nucleus of a trained LM usually
# fits), then 16 times as many while that can still suffice, then sorts the whole vocabulary.
_TOP_P_CANDIDATES = 256
# Before that, the tokens within this many nats of the best one are tried: usually a few dozen
# that already hold the nucleus, found by one comparison instead of partitioning the vocabulary.
_NEAR_BEST_NATS = 9.0
# The repetition penalty patches the step's float32 weights in place while the penalised maximum
# stays within this many nats of the raw one; tokens below that are too rare to matter.
_REUSE_RANGE = 20.0
_DRAW_BLOCK = 512


# Config ranges. With logits within float32 range, temperature >= MIN_TEMPERATURE and the penalty
# within its range, logits / T after the penalty stay finite in float64: no inf - inf, no NaN.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 100.0
REPETITION_PENALTY_RANGE = (0.01, 100.0)
MAX_TOP_K = 10_000_000
MAX_NEW_TOKENS = 65_536


@dataclass(frozen=True)
class SamplerConfig:
    """How to pick each token. Every field is validated on construction."""

    temperature: float = 0.7  # 0 => greedy
    top_k: int = 0  # 0 => off
    top_p: float = 1.0  # 1.0 => off
    # 1.0 => off. CTRL-style, for ids already in the context: positive logits are divided by it,
    # negative ones multiplied, so a penalty > 1 always lowers them.
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Numbers are ConfigValueErrors, which are ValueErrors: callers catch one exception type.
        temperature = check_number("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if 0.0 < temperature < MIN_TEMPERATURE:
            raise ConfigValueError("temperature", self.temperature, f"0 (greedy) or >= {MIN_TEMPERATURE}")
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "top_k", check_number("top_k", self.top_k, 0, MAX_TOP_K, integer=True))
        object.__setattr__(self, "top_p", check_number("top_p", self.top_p, 0.0, 1.0, low_open=True))
        penalty = check_number("repetition_penalty", self.repetition_penalty, *REPETITION_PENALTY_RANGE)
        object.__setattr__(self, "repetition_penalty", penalty)
        tokens = check_number("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
        object.__setattr__(self, "max_new_tokens", tokens)
        object.__setattr__(self, "seed", check_optional("seed", self.seed, 0, 2**64 - 1, integer=True))
        # A bare str is iterable too: it would silently become one stop string per character.
        if isinstance(self.stop_strings, str) or not isinstance(self.stop_strings, (list, tuple)):
            raise ValueError(f"stop_strings must be a list or tuple of str, got {self.stop_strings!r}")
        for stop in self.stop_strings:
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop_strings must hold non-empty str, got {stop!r}")
        # Types are normalised (int, float, tuple) so that configs read from JSON/msgpack compare
        # and log identically.
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

    @property
    def greedy(self) -> bool:
        """True when the argmax is taken (temperature 0)."""
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/msgpack-friendly dict (stop strings as a list), for logs."""
        out = asdict(self)
        out["stop_strings"] = list(self.stop_strings)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplerConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ValueError(f"sampler config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in d if key not in known)
        if unknown:
            raise ValueError(f"unknown sampler config keys: {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class SampledToken:
    """One drawn token and its two log-probs (see the module docstring)."""

    token_id: int
    logprob: float
    full_logprob: float


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.exp(x - top).sum()))


def _sort_desc(z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` ordered by descending ``z``, ties by ascending id."""
    return ids[np.lexsort((ids, -z[ids]))]


class _Workspace:
    """Vocabulary-sized buffers reused across steps.

    Fresh arrays of this size come from mmap and page-fault on every step, and every extra pass
    over memory shows at this size; reuse keeps a step at a few hundred microseconds.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.z = np.empty(size, np.float64)  # logits / T, then penalised in place
        self.scratch = np.empty(size, np.float32)  # partitioned in place
        self.weights = np.empty(size, np.float32)  # exp(z - ref)
        self.mask = np.empty(size, np.bool_)


def _top_candidates(z: np.ndarray, k: int, ws: _Workspace) -> np.ndarray:
    """The k best ids (k < V) in descending order, ties to the lowest ids: O(V) plus a sort of ~k."""
    size = z.size
    # Partition a float32 copy (half the memory traffic of float64). Rounding is monotone, so
    # every id of the exact top k has z > the float32 value just below the k-th largest float32;
    # the few extra ids that rounding lets in are dropped by the exact sort below.
    scratch = ws.scratch
    with np.errstate(over="ignore"):  # float64 logits beyond float32 range: exact path below
        np.copyto(scratch, z, casting="same_kind")
    scratch.partition(size - k)
    kth = scratch[size - k]
    if np.isfinite(kth):
        below = np.nextafter(kth, np.float32(-np.inf))
        candidates = np.flatnonzero(np.greater(z, below, out=ws.mask))
    else:
        # -inf among the top k (or float32 overflow): select exactly in float64; ties at the
        # boundary go to the lowest ids, which argpartition would not guarantee.
        kth = np.partition(z, size - k)[size - k]
        above = np.flatnonzero(np.greater(z, kth, out=ws.mask))
        ties = np.flatnonzero(np.equal(z, kth, out=ws.mask))[: k - above.size]
        candidates = np.concatenate((above, ties))
    return _sort_desc(z, candidates)[:k]


def _nucleus_size(cumulative: np.ndarray, top_p: float) -> int:
    """Length of the smallest prefix whose mass reaches top_p (all of it if rounding falls short)."""
    return min(int(np.searchsorted(cumulative, top_p, side="left")) + 1, cumulative.size)


def _truncate(z: np.ndarray, lse: float, top_k: int, top_p: float, ws: _Workspace) -> np.ndarray | None:
    """Ids kept by top-k then top-p; None when nothing is cut.

    Best first, except for a nucleus found by sorting the whole vocabulary (id order). ``lse`` is
    the logsumexp of ``z`` over the whole vocabulary, read only by top-p without top-k.
    """
    size = z.size
    if 0 < top_k < size:
        kept = _top_candidates(z, top_k, ws)
        if top_p < 1.0:
            # As in HF: top-p applies to the distribution renormalised over the top k.
            zk = z[kept]
            mass = np.cumsum(np.exp(zk - _logsumexp(zk)))
            kept = kept[: _nucleus_size(mass, top_p)]
        return kept
    if top_p >= 1.0:
        return None
    near = _near_best_nucleus(z, lse, top_p, ws)
    if near is not None:
        return near
    count = _TOP_P_CANDIDATES
    while count < size:
        kept = _top_candidates(z, count, ws)
        probs = np.exp(z[kept] - lse)
        mass = np.cumsum(probs)
        if mass[-1] >= top_p:
            return kept[: _nucleus_size(mass, top_p)]
        # Probabilities fall with rank: a wider pass can only reach top_p if the ranks it adds,
        # each at most as likely as the last candidate, can close the gap.
        count *= 16
        if mass[-1] + (count - kept.size) * probs[-1] < top_p:
            break
    return _wide_nucleus(z, lse, top_p)


def _near_best_nucleus(z: np.ndarray, lse: float, top_p: float, ws: _Workspace) -> np.ndarray | None:
    """The nucleus when the tokens within ``_NEAR_BEST_NATS`` of the best hold it and are at most
    ``_TOP_P_CANDIDATES``; else None. Exactly what the ranked search returns then: those tokens are
    the best ones in rank order (a threshold on the float64 ``z`` keeps every tie together), so
    their prefix sums are the ranked search's."""
    threshold = float(z.max()) - _NEAR_BEST_NATS
    candidates = np.flatnonzero(np.greater(z, threshold, out=ws.mask))
    if candidates.size > _TOP_P_CANDIDATES:
        return None
    kept = _sort_desc(z, candidates)
    mass = np.cumsum(np.exp(z[kept] - lse))
    if mass[-1] < top_p:
        return None
    return kept[: _nucleus_size(mass, top_p)]


def _wide_nucleus(z: np.ndarray, lse: float, top_p: float) -> np.ndarray:
    """Top-p over the whole vocabulary, in id order: for flat distributions.

    Sorts the values, not the ids: numpy's vectorised value sort is several times faster than
    argsort. The prefix sums are those of a full argsort, so the cut is exactly the same; the ids
    are then selected by the boundary value, ties at the boundary going to the lowest ids.
    """
    ranked = np.sort(z)[::-1]
    mass = np.cumsum(np.exp(ranked - lse))
    size = _nucleus_size(mass, top_p)
    boundary = ranked[size - 1]
    keep = z > boundary
    ties = np.flatnonzero(z == boundary)[: size - int(keep.sum())]
    keep[ties] = True
    return np.flatnonzero(keep)


def _scale_into(z: np.ndarray, raw: np.ndarray, temperature: float) -> float:
    """Copy ``raw / temperature`` into float64 ``z``; return its maximum after checking the logits."""
    np.copyto(z, raw)
    top_raw = float(z.max())
    if not top_raw < math.inf:  # max propagates NaN
        raise ValueError(f"logits must not contain NaN or +inf, max is {top_raw}")
    if top_raw == -math.inf:
        raise ValueError("logits must not all be -inf")
    if temperature != 1.0:
        z /= temperature
        top_raw /= temperature  # division is monotone: still the maximum
    return top_raw


def _fill_weights(z: np.ndarray, ref: float, out: np.ndarray) -> np.ndarray:
    """float32 ``exp(z - ref)`` into ``out``: the one vocabulary-wide exp (see module docstring)."""
    np.subtract(z, ref, out=out, casting="same_kind")
    return np.exp(out, out=out)


def _pick(cdf: np.ndarray, target: float) -> int:
    """First index whose cumulative weight exceeds ``target``, never a zero-weight entry."""
    # side="right" skips entries whose cdf equals the one before (zero weight).
    index = int(np.searchsorted(cdf, target, side="right"))
    if index >= cdf.size:  # target rounded up to the total: the last entry with weight
        index = int(np.searchsorted(cdf, cdf[-1], side="left"))
    return index


def _draw(weights: np.ndarray, u: float) -> tuple[int, float]:
    """Inverse-CDF draw of an index proportional to ``weights``; returns (index, total weight).

    Block sums, then a cumsum inside one block: a cumsum over the whole vocabulary is serial and
    several times slower than these vectorised sums.
    """
    starts = np.arange(0, weights.size, _DRAW_BLOCK)
    cdf = np.cumsum(np.add.reduceat(weights, starts, dtype=np.float64))
    total = float(cdf[-1])
    target = u * total
    block = _pick(cdf, target)
    low = block * _DRAW_BLOCK
    inner = np.cumsum(weights[low : low + _DRAW_BLOCK], dtype=np.float64)
    return low + _pick(inner, target - (float(cdf[block - 1]) if block else 0.0)), total


class Sampler:
    """Draws tokens under a :class:`SamplerConfig`; a seeded config is reproducible.

    Holds its random state and work buffers: use one sampler per generation stream, not shared
    between threads.
    """

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._ws: _Workspace | None = None

    def sample(self, logits: np.ndarray, context_ids: np.ndarray | Sequence[int] = ()) -> SampledToken:
        """Pick the next token from 1-D ``logits`` (float32 or float16) over the vocabulary.

        ``context_ids`` are the ids seen so far (prompt and generated); only the repetition
        penalty reads them.
        """
        raw = np.asarray(logits)
        if raw.ndim != 1 or raw.size == 0 or raw.dtype.kind != "f":
            raise ValueError(f"logits must be a non-empty 1-D float array, got shape {raw.shape} dtype {raw.dtype}")
        ws = self._ws
        if ws is None or ws.size != raw.size:
            ws = self._ws = _Workspace(raw.size)
        cfg = self.config
        temperature = cfg.temperature if cfg.temperature > 0 else 1.0
        # z holds raw / T in float64 (float16 arithmetic would wreck rare tokens' log-probs);
        # full_logprob recomputes raw[token] / T, so the penalty may then overwrite z in place.
        z = ws.z
        top_raw = _scale_into(z, raw, temperature)
        weights = _fill_weights(z, top_raw, ws.weights)
        lse_raw = top_raw + math.log(float(weights.sum(dtype=np.float64)))

        def full_logprob(token: int) -> float:
            return float(np.float64(raw[token]) / temperature - lse_raw)

        # From here z is penalised; weights hold float32 exp(z - ref).
        ref = top_raw
        ids = self._repeated_ids(context_ids, raw.size)
        if ids is not None:
            seen = raw[ids].astype(np.float64)
            penalty = cfg.repetition_penalty
            penalised = np.where(seen > 0, seen / penalty, seen * penalty) / temperature
            z[ids] = penalised  # duplicate ids write the same value: no np.unique needed
        if cfg.greedy:
            token = int(np.argmax(z))  # first maximum: ties go to the lowest id
            return SampledToken(token, 0.0, full_logprob(token))
        if ids is not None:
            top = float(z.max())
            if top <= top_raw and top_raw - top <= _REUSE_RANGE:
                # Patch only the repeated ids; the kept scale is far from float32 underflow.
                weights[ids] = np.exp(penalised - top_raw)
            else:
                ref = top
                weights = _fill_weights(z, ref, ws.weights)
        token, logprob = self._draw_token(z, ref, weights, ws)
        return SampledToken(token, logprob, full_logprob(token))

    def _draw_token(self, z: np.ndarray, ref: float, weights: np.ndarray, ws: _Workspace) -> tuple[int, float]:
        """Draw from penalised, scaled logits ``z`` (``weights`` = exp(z - ref)) after top-k/top-p.

        Returns the token and its log-prob under the distribution it was drawn from.
        """
        cfg = self.config
        if cfg.top_k > 0 or cfg.top_p < 1.0:
            # Only top-p without top-k needs the vocabulary-wide normaliser.
            needs_lse = not 0 < cfg.top_k < z.size
            lse = ref + math.log(float(weights.sum(dtype=np.float64))) if needs_lse else math.nan
            kept = _truncate(z, lse, cfg.top_k, cfg.top_p, ws)
            if kept is not None:
                # Usually few candidates: exact float64 weights.
                zs = z[kept]
                top = float(zs.max())
                cdf = np.cumsum(np.exp(zs - top))
                total = float(cdf[-1])
                index = _pick(cdf, self._rng.random() * total)
                return int(kept[index]), float(zs[index] - top - math.log(total))
        token, total = _draw(weights, self._rng.random())
        return token, float(z[token] - ref - math.log(total))

    def _repeated_ids(self, context_ids: np.ndarray | Sequence[int], size: int) -> np.ndarray | None:
        """Context ids as an index array, or None when the repetition penalty has nothing to do."""
        if self.config.repetition_penalty == 1.0:
            return None
        ids = np.asarray(context_ids)
        if ids.size == 0:
            return None
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"context_ids must be a 1-D sequence of ints, got shape {ids.shape} dtype {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise ValueError(f"context_ids holds id {bad}, outside the vocabulary of size {size}")
        return ids
