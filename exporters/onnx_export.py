"""Export an HF causal LM to ONNX with an explicit KV cache interface.

Graph interface (names are the contract with ``npcrl.runtime.model``):
  inputs   input_ids (B, T) int64, attention_mask (B, P+T) int64, position_ids (B, T) int64,
           past.{i}.key / past.{i}.value (B, kv_heads, P, head_dim) float32 for each layer i
  outputs  logits (B, T, V) float32, present.{i}.key / present.{i}.value (B, kv_heads, P+T, head_dim)
An empty past (P = 0) is the prefill. We export through ``torch.onnx.export(dynamo=True)``; the
flat past tensors are rebuilt into a ``DynamicCache`` inside the wrapper.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from npcrl.runtime.bundle import KVLayout

OPSET = 18


def _log(message: str) -> None:
    print(f"[npcrl export] {message}", file=sys.stderr, flush=True)


def kv_layout_of(model: Any) -> KVLayout:
    """Read the cache layout by running the model once: robust to config naming differences."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 2), dtype=torch.long), use_cache=True)
    cache = out.past_key_values
    keys = [layer.keys for layer in cache.layers]
    _, heads, _, head_dim = keys[0].shape
    return KVLayout(num_layers=len(keys), num_kv_heads=int(heads), head_dim=int(head_dim), dtype="float32")


def _make_wrapper(model: Any, num_layers: int) -> Any:
    import torch
    from transformers.cache_utils import DynamicCache

    class KVCacheWrapper(torch.nn.Module):
        """Flat tensors in and out, so the ONNX graph has one named input per past tensor."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for layer in range(num_layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return KVCacheWrapper().eval()


def export_onnx(model: Any, layout: KVLayout, out_path: Path) -> None:
    """Write the fp32 ONNX graph (external data file beside it when large)."""
    import torch

    wrapper = _make_wrapper(model, layout.num_layers)
    batch, seq, past_len = 1, 4, 3
    example_ids = torch.ones((batch, seq), dtype=torch.long)
    example_mask = torch.ones((batch, past_len + seq), dtype=torch.long)
    example_pos = torch.arange(past_len, past_len + seq).unsqueeze(0)
    example_past = tuple(
        torch.zeros((batch, layout.num_kv_heads, past_len, layout.head_dim)) for _ in layout.past_names()
    )
    b, s, p, t = (torch.export.Dim(n) for n in ("batch", "seq", "past", "total"))
    # Nested to match *past: a flat dict fails with "inputs has 4 elements, but dynamic_shapes has N".
    dynamic_shapes = {
        "input_ids": {0: b, 1: s},
        "attention_mask": {0: b, 1: t},
        "position_ids": {0: b, 1: s},
        "past": tuple({0: b, 2: p} for _ in layout.past_names()),
    }
    _log(f"tracing and exporting {type(model).__name__} to ONNX (opset {OPSET}); large models take a minute")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example_ids, example_mask, example_pos, *example_past),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask", "position_ids", *layout.past_names()],
            output_names=["logits", *layout.present_names()],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    untranspose_matmul_weights(proto)
    save_model(proto, out_path)
    _log(f"exported in {time.perf_counter() - started:.1f} s")


def untranspose_matmul_weights(proto: Any) -> None:
    """Fold ``MatMul(x, Transpose(W))`` with a constant W into ``MatMul(x, W')``.

    The tied LM head exports as a Transpose of the embedding. Folding it here lets the weight-only
    quantiser see (and shrink) the LM head, the largest matrix of a small model, and spares the
    runtime a transposed copy at session start.
    """
    from onnx import numpy_helper

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in list(graph.node):
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        transpose = producers.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits:
            continue
        perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
        if perm and perm[0] != [1, 0]:
            continue
        weight = numpy_helper.to_array(inits[transpose.input[0]])
        if weight.ndim != 2:
            continue
        new_name = transpose.input[0] + ".T"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), new_name))
        node.input[1] = new_name
        if consumers.get(transpose.output[0], 0) == 1:
            graph.node.remove(transpose)


def save_model(proto: Any, out_path: Path) -> None:
    """Save ONNX; weights go to ``<name>.data`` beside the graph when the proto would pass 2 GB."""
    import onnx

    size = proto.ByteSize()
    data_name = out_path.name + ".data"
    if size > 1_800_000_000:
        onnx.save_model(
            proto, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
        )
    else:
        onnx.save_model(proto, str(out_path))
