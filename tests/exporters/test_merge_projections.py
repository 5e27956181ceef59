"""Merging quantised projections that read one input: same outputs, fewer MatMulNBits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.merge_projections import merge_shared_input_matmuls
from npcrl.runtime.bundle import load_bundle


def _quantised_graph(path: Path, block_sizes: tuple[int, int, int] = (32, 32, 32)) -> None:
    """x -> gate, up (both from x) and other (from gate's output): three MatMuls, 8-bit blocks."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(0)
    k, n = 64, 48
    weights = {"w_gate": (k, n), "w_up": (k, 2 * n), "w_other": (n, k)}
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name) for name, shape in weights.items()
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_gate"], ["gate"], name="/mlp/gate_proj/MatMul"),
        helper.make_node("MatMul", ["x", "w_up"], ["up"], name="/mlp/up_proj/MatMul"),
        helper.make_node("MatMul", ["gate", "w_other"], ["other"], name="/mlp/other/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("gate", "up", "other")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for node, block in zip(
        ("/mlp/gate_proj/MatMul", "/mlp/up_proj/MatMul", "/mlp/other/MatMul"), block_sizes, strict=True
    ):
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != node]
        quantizer = MatMulNBitsQuantizer(
            model, bits=8, block_size=block, is_symmetric=True, accuracy_level=4, nodes_to_exclude=others
        )
        quantizer.process()
        model = quantizer.model.model
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["gate", "up", "other"], {"x": x})


def _count(path: Path, op: str) -> int:
    return sum(node.op_type == op for node in onnx.load(str(path), load_external_data=False).graph.node)


def test_projections_of_one_input_become_one_matmul_with_the_same_outputs(tmp_path):
    path = tmp_path / "model.onnx"
    _quantised_graph(path)
    x = np.random.default_rng(1).normal(0, 1, (2, 5, 64)).astype(np.float32)
    before = _run(path, x)
    assert _count(path, "MatMulNBits") == 3

    assert merge_shared_input_matmuls(path) == 1
    assert _count(path, "MatMulNBits") == 2  # gate and up are one now; "other" reads another input
    after = _run(path, x)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)
    assert not any(p.name.endswith(".data") and p.name != "model.onnx.data" for p in tmp_path.iterdir())

    assert merge_shared_input_matmuls(path) == 0  # nothing left to merge
    np.testing.assert_allclose(_run(path, x)[1], before[1], rtol=1e-5, atol=1e-5)


def test_projections_with_different_blocks_are_left_apart(tmp_path):
    path = tmp_path / "model.onnx"
    _quantised_graph(path, block_sizes=(32, 64, 32))
    assert merge_shared_input_matmuls(path) == 0
    assert _count(path, "MatMulNBits") == 3


def test_exported_quantised_llama_has_its_mlp_gate_and_up_merged(tiny_bundles):
    bundle = load_bundle(tiny_bundles["llama-q8"])
    if bundle.manifest.model.get("graph") != "fused":
        pytest.skip("the tiny Llama was exported through the traced route (onnxruntime-genai missing)")
    graph = onnx.load(str(bundle.onnx_path), load_external_data=False).graph
    readers: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            readers[node.input[0]] = readers.get(node.input[0], 0) + 1
    assert readers and max(readers.values()) == 1  # no two quantised products of one input remain
    assert bundle.manifest.quantization["merged_projections"] == bundle.manifest.kv_cache.num_layers


def test_fused_export_quantises_with_the_block_size_its_spec_names(tiny_model_dirs, tmp_path):
    """onnxruntime-genai's builder silently ignores block-size option names it does not read."""
    from exporters.export import export_bundle

    bundle = export_bundle(tiny_model_dirs["llama"], tmp_path / "fast", quant="q8-fast")
    if bundle.manifest.model.get("graph") != "fused":
        pytest.skip("the tiny Llama was exported through the traced route (onnxruntime-genai missing)")
    graph = onnx.load(str(bundle.onnx_path), load_external_data=False).graph
    blocks = {
        helper.get_attribute_value(attribute)
        for node in graph.node
        if node.op_type == "MatMulNBits"
        for attribute in node.attribute
        if attribute.name == "block_size"
    }
    assert blocks == {64} and bundle.manifest.quantization["block_size"] == 64
