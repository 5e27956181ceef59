"""The cache interface every sequence holds, and the traced graphs' cache.

``KVCache`` is what the runtime hands out and takes back, whatever keeps the keys and values:
fused graphs keep them in a ``npcrl.runtime.kvcache.KVPool`` slot, traced graphs return new
``present`` tensors each step, which ``ConcatCache`` holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort


class KVCache:
    """The past keys/values of one sequence and the token ids they cover."""

    token_ids: list[int]
    last_logits: np.ndarray | None = None
    """logits after the last token, kept by ``forward``: a prompt held whole needs no pass to start"""

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def alive(self) -> bool:
        """False once evicted or released: the cache no longer holds its tokens' state."""
        return True

    def fork(self) -> KVCache:
        """An independent cache holding the same tokens."""
        raise NotImplementedError

    def truncate(self, length: int) -> None:
        """Forget every token after the first ``length`` (rewind)."""
        raise NotImplementedError

    def release(self) -> None:
        """Free the memory now instead of at garbage collection."""


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ConcatCache(KVCache):
    """Traced graphs: ``forward`` replaces ``values`` with the graph's new ``present`` tensors."""

    def __init__(self, values: list[ort.OrtValue], token_ids: list[int]) -> None:
        self.values = values
        self.token_ids = token_ids

    def fork(self) -> ConcatCache:
        # forward never writes into its inputs, so the forks may share the tensors
        fork = ConcatCache(list(self.values), list(self.token_ids))
        fork.last_logits = self.last_logits
        return fork

    def truncate(self, length: int) -> None:
        if not 0 <= length <= len(self.token_ids):
            raise ValueError(f"cannot truncate {len(self.token_ids)} tokens to {length}")
        if length == len(self.token_ids):
            return
        self.values = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :length])) for v in self.values
        ]
        del self.token_ids[length:]
        self.last_logits = None
