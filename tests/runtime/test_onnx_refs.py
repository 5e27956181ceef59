"""The external-data reader agrees with the onnx package and refuses unsafe locations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from npcrl.errors import BundleError
from npcrl.runtime.onnx_refs import MAX_DEPTH, check_listed, external_data_references, references_in


def _onnx_locations(model: onnx.ModelProto) -> set[str]:
    """What the onnx package says the graph loads: every tensor stored as external data."""
    found = set()
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            found.add(external_data_helper.ExternalDataInfo(tensor).location)
    return found


def _external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), name)
    external_data_helper.set_external_data(tensor, location, offset=0, length=16)
    tensor.ClearField("raw_data")
    return tensor


def _nested_model() -> onnx.ModelProto:
    """Initializers, a Constant's tensor attribute and an If node's two branch subgraphs, each with
    external data, and a sparse initializer whose values are external."""
    branch = [
        helper.make_graph(
            [helper.make_node("Identity", [f"w_{side}"], [f"y_{side}"])],
            side,
            [],
            [helper.make_tensor_value_info(f"y_{side}", TensorProto.FLOAT, [4])],
            initializer=[_external(f"w_{side}", f"{side}.onnx.data")],
        )
        for side in ("then", "else")
    ]
    nodes = [
        helper.make_node("Constant", [], ["c"], value=_external("c", "const.onnx.data")),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch[0], else_branch=branch[1]),
    ]
    sparse = helper.make_sparse_tensor(
        _external("s_values", "sparse.onnx.data"), numpy_helper.from_array(np.array([0], dtype=np.int64)), [4]
    )
    graph = helper.make_graph(
        nodes,
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[_external("w", "weights.onnx.data"), _external("w2", "weights.onnx.data")],
        sparse_initializer=[sparse],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize("name", ["gpt2-fp32", "llama-fp32", "llama-q8", "llama-q4"])
def test_reader_matches_the_onnx_package_on_exported_graphs(tiny_bundles, name):
    path = Path(tiny_bundles[name]) / "model.onnx"
    expected = _onnx_locations(onnx.load(str(path), load_external_data=False))
    assert set(external_data_references(path)) == expected


def test_reader_finds_nested_and_attribute_tensors():
    model = _nested_model()
    found = references_in(model.SerializeToString(), "nested.onnx")
    assert set(found) >= _onnx_locations(model)
    assert set(found) == {
        "weights.onnx.data",
        "const.onnx.data",
        "then.onnx.data",
        "else.onnx.data",
        "sparse.onnx.data",
    }
    assert found.count("weights.onnx.data") == 1


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("/etc/passwd.onnx.data", "must be a plain relative path"),
        ("../outside.onnx.data", "must be a plain relative path"),
        ("sub/../../outside.onnx.data", "must be a plain relative path"),
        ("C:\\weights.onnx.data", "must be a plain relative path"),
        ("other.onnx.data", "which manifest.json does not list"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "windows", "unlisted"],
)
def test_unsafe_or_unlisted_locations_are_refused(location, message):
    with pytest.raises(BundleError, match=message):
        check_listed(location, {"model.onnx", "model.onnx.data"}, Path("model.onnx"))
    assert check_listed("./model.onnx.data", {"model.onnx.data"}, Path("model.onnx")) == "model.onnx.data"


def _message(number: int, payload: bytes) -> bytes:
    key = (number << 3) | 2
    return bytes([key]) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def test_nesting_beyond_the_bound_is_refused():
    graph = b""
    for _ in range(MAX_DEPTH):  # graph > node > attribute > graph ... : 3 messages per level
        graph = _message(1, _message(5, _message(6, graph)))
    with pytest.raises(BundleError, match="nested deeper than"):
        references_in(_message(7, graph), "deep.onnx")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_message(7, b"")[:1] + _varint(1 << 40), "claims"),
        (b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint longer than 10 bytes"),
        (b"\x3b", "unsupported wire type 3"),
        (b"\x38\x01", "expected a message"),
        (b"\x00\x01", "field number 0"),
    ],
    ids=["length-past-end", "long-varint", "group", "graph-as-varint", "field-zero"],
)
def test_malformed_protobuf_is_refused_with_the_file_named(data, message):
    with pytest.raises(BundleError, match=rf"bad\.onnx: not a valid ONNX protobuf: .*{message}"):
        references_in(data, "bad.onnx")


def test_a_location_that_is_not_utf8_is_refused():
    entry = _message(1, b"location") + _message(2, b"\xff\xfe")
    tensor = _message(13, entry)
    with pytest.raises(BundleError, match="not UTF-8"):
        references_in(_message(7, _message(5, tensor)), "bad.onnx")
