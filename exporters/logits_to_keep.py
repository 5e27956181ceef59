"""A ``logits_to_keep`` input: the LM head only for the positions the caller wants.

Generating needs the next-token logits of a prompt's last position only, yet a graph computes the
LM head (a 576 x 49,152 product for SmolLM2) for every position it is fed: about a fifth of a
prefill's arithmetic, thrown away. With this input (int64, shape [1]) the graph slices the final
hidden states to their last ``k`` positions before the LM head, so ``logits`` is ``(B, k, V)``;
``k`` = the fed length gives every position (scoring), 1 the last (generation). Graphs without
it keep working: the runtime binds the input only where the graph declares it.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from exporters.errors import ExportError
from npcrl.runtime.session import LOGITS_TO_KEEP as INPUT_NAME


def add_logits_to_keep(path: Path) -> None:
    """Rewrite the graph at ``path`` (weights in ``<name>.data`` beside it, left untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(i.name == INPUT_NAME for i in graph.input):
        return
    heads = [node for node in graph.node if "logits" in node.output]
    if len(heads) != 1 or heads[0].op_type not in ("MatMul", "MatMulNBits"):
        raise ExportError(f"{path}: no single MatMul producing 'logits' to put {INPUT_NAME} in front of")
    head = heads[0]
    hidden = head.input[0]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, [1]))
    graph.initializer.extend(
        [
            helper.make_tensor(f"{INPUT_NAME}/ends", TensorProto.INT64, [1], [2**62]),
            helper.make_tensor(f"{INPUT_NAME}/axes", TensorProto.INT64, [1], [1]),
        ]
    )
    kept = f"{INPUT_NAME}/hidden_states"
    slicing = [
        helper.make_node("Neg", [INPUT_NAME], [f"{INPUT_NAME}/starts"], name=f"/{INPUT_NAME}/Neg"),
        helper.make_node(
            "Slice",
            [hidden, f"{INPUT_NAME}/starts", f"{INPUT_NAME}/ends", f"{INPUT_NAME}/axes"],
            [kept],
            name=f"/{INPUT_NAME}/Slice",
        ),
    ]
    head.input[0] = kept
    position = list(graph.node).index(head)
    for offset, node in enumerate(slicing):
        graph.node.insert(position + offset, node)
    onnx.save(model, str(path))


def remove_logits_to_keep(path: Path) -> None:
    """The inverse of ``add_logits_to_keep``: the LM head reads every position again, as in graphs
    exported before the input existed (benchmarks and compatibility tests compare against them)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    slicer = next(n for n in graph.node if n.name == f"/{INPUT_NAME}/Slice")
    next(n for n in graph.node if "logits" in n.output).input[0] = slicer.input[0]
    for name in (f"/{INPUT_NAME}/Neg", f"/{INPUT_NAME}/Slice"):
        graph.node.remove(next(n for n in graph.node if n.name == name))
    graph.input.remove(next(i for i in graph.input if i.name == INPUT_NAME))
    kept = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name.startswith(f"{INPUT_NAME}/") and i.name not in kept]:
        graph.initializer.remove(init)
    onnx.save(model, str(path))
