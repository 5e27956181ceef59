"""The quantised graph's KV-cache check (``exporters.parity.cache_consistency``): kernel noise in
one logit passes, a cache that does not reproduce the graph fails, naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.parity import ParityError, cache_consistency, check_cache_consistency

VOCAB = 64


class FakeGraph:
    """Logits that depend on every earlier token (as a causal LM's do); ``run(ids, past)`` continues
    from ``past`` (the ids so far), as the exported graph's KV cache does. ``cached_error`` is what
    the cached path adds to each step's logits."""

    def __init__(self, cached_error: Any = None) -> None:
        self.cached_error = cached_error

    @staticmethod
    def logits_of(prefix: list[int]) -> np.ndarray:
        rng = np.random.default_rng(sum((k + 1) * t for k, t in enumerate(prefix)))
        return rng.normal(0.0, 8.0, VOCAB).astype(np.float32)

    def run(self, ids: list[int], past: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
        before = list(past or [])
        rows = np.stack([self.logits_of(before + ids[: k + 1]) for k in range(len(ids))])
        if past is not None and self.cached_error is not None:
            rows = rows + self.cached_error(rows)
        return rows, before + ids


SEQUENCE = [5, 9, 3, 17, 40, 2, 33, 8, 21, 60, 11, 4]


def test_a_sound_cache_with_one_noisy_logit_passes() -> None:
    def one_logit_off(rows: np.ndarray) -> np.ndarray:
        noise = np.zeros_like(rows)
        noise[0, 7] = 0.06 * float(np.abs(rows).max())  # past the old 5%-of-range rule
        return noise

    stats = cache_consistency(FakeGraph(one_logit_off), 4, SEQUENCE)  # type: ignore[arg-type]
    assert stats["cache_max_abs_logit_diff"] > 0.05 * stats["cache_logit_scale"]
    check_cache_consistency(stats, 8, Path("model.onnx"))
    exact = cache_consistency(FakeGraph(), 4, SEQUENCE)  # type: ignore[arg-type]
    assert exact["cache_max_abs_logit_diff"] == 0.0 and exact["cache_kl_mean"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_cache_that_does_not_reproduce_the_graph_fails(bits: int) -> None:
    def stale(rows: np.ndarray) -> np.ndarray:  # a cache that lost the context: other distributions
        return FakeGraph.logits_of([99]) - rows

    stats = cache_consistency(FakeGraph(stale), 4, SEQUENCE)  # type: ignore[arg-type]
    with pytest.raises(
        ParityError, match=rf"model.onnx: cached and one-shot next-token distributions differ by KL .* {bits}-bit"
    ):
        check_cache_consistency(stats, bits, Path("model.onnx"))


def test_a_nan_in_the_cached_path_fails() -> None:
    stats = cache_consistency(FakeGraph(lambda rows: np.full_like(rows, np.nan)), 4, SEQUENCE)  # type: ignore[arg-type]
    with pytest.raises(ParityError, match="KL nan"):
        check_cache_consistency(stats, 8, Path("model.onnx"))
