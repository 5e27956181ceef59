"""Keys and values of persona prefixes under the frozen reference, computed once per run.

Every scoring pass after the first update runs the reference over each micro-batch's shared
persona prefix (~630 of ~875 tokens of a real turn), and the reference never changes during a
run: its prefix keys and values are the same every time. ``PrefixCache`` keeps them, so the
reference runs only the rows' own suffixes. Exact: the cached tensors are what the pass would
compute (a prefix's keys and values depend only on its tokens and the weights), sliced when a
later batch shares fewer tokens. Only for weights that do not change while the cache lives: the
policy's prefix changes with every optimizer step and is never cached.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

Layers = list[tuple[torch.Tensor, torch.Tensor]]
"""per decoder layer, (keys, values) of one row: (1, kv heads, prefix tokens, head dim)"""


class PrefixCache:
    """The (1, n) prefixes' keys and values per decoder layer, the ``max_entries`` last used kept."""

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], Layers] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def layers(self, decoder: nn.Module, prefix_ids: torch.Tensor) -> Layers:
        """Keys and values of the (1, n) ``prefix_ids``: a cached prefix that starts with them,
        sliced to n tokens, or a new pass of ``decoder`` (then kept)."""
        tokens = tuple(int(t) for t in prefix_ids[0])
        n = len(tokens)
        for key, layers in self._entries.items():
            if len(key) >= n and key[:n] == tokens:
                self._entries.move_to_end(key)
                self.hits += 1
                return [(k[:, :, :n], v[:, :, :n]) for k, v in layers]
        self.misses += 1
        with torch.no_grad():
            past = decoder(input_ids=prefix_ids, use_cache=True).past_key_values
        layers = [(layer.keys, layer.values) for layer in past.layers]
        self._entries[tokens] = layers
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return layers

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every prefix (the weights they were computed with changed)."""
        self._entries.clear()
