"""Property-based fuzzing of the manifest parser and the ONNX reference reader: whatever the input,
the only error is ``BundleError`` (bounded: the whole file runs in seconds)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from npcrl.errors import BundleError
from npcrl.runtime.bundle import Manifest, read_manifest
from npcrl.runtime.onnx_refs import references_in

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID: dict[str, Any] = {
    "format": "npcrl-bundle",
    "format_version": 2,
    "files": {"model.onnx": {"sha256": "a" * 64, "bytes": 10}, "tokenizer.json": {"sha256": "b" * 64, "bytes": 20}},
    "onnx_file": "model.onnx",
    "tokenizer_file": "tokenizer.json",
    "kv_cache": {
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": 16,
        "dtype": "float32",
        "axes": ["batch", "kv_heads", "seq", "head_dim"],
        "past_name": "past.{layer}.{kind}",
        "present_name": "present.{layer}.{kind}",
        "position_ids": True,
    },
    "special_tokens": {"eos_token_ids": [2], "bos_token_id": 1, "special_token_ids": [0, 1, 2]},
    "vocab_size": 400,
    "chat_template": "{{ messages }}",
    "model": {"graph": "torch", "max_position_embeddings": 256},
    "quantization": {"method": "none"},
    "parity": {},
    "parent": None,
    "provenance": {},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


def _parse(data: Any) -> None:
    try:
        Manifest.from_dict(data, "fuzz", check_hash=False).content_hash  # noqa: B018
        Manifest.from_dict(data, "fuzz")
    except BundleError:
        pass


@FUZZ
@given(json_values)
def test_any_json_value_gives_a_manifest_or_bundle_error(data):
    _parse(data)


@FUZZ
@given(st.data())
def test_one_field_of_a_valid_manifest_replaced_by_any_json(draw):
    data = copy.deepcopy(VALID)
    paths = _paths(data)[1:]
    path = draw.draw(st.sampled_from(paths))
    target = data
    for key in path[:-1]:
        target = target[key]
    if draw.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = draw.draw(json_values)
    _parse(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_manifest_file_gives_a_manifest_or_bundle_error(tmp_path: Path, raw: bytes):
    (tmp_path / "manifest.json").write_bytes(raw)
    try:
        read_manifest(tmp_path)
    except BundleError:
        pass


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, json.dumps(VALID).replace('"vocab_size": 400', '"vocab_size": ' + "9" * 5000)],
    ids=["deep-nesting", "huge-integer"],
)
def test_hostile_manifest_json_is_a_bundle_error(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=r"manifest\.json"):
        read_manifest(tmp_path)


def _sample_graph() -> bytes:
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    external_data_helper.set_external_data(tensor, "model.onnx.data", offset=0, length=16)
    tensor.ClearField("raw_data")
    inner = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [], initializer=[tensor])
    node = helper.make_node("Loop", ["n", "c"], ["y"], body=inner)
    graph = helper.make_graph(
        [node],
        "main",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[tensor],
    )
    return helper.make_model(graph).SerializeToString()


SAMPLE = _sample_graph()


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_give_references_or_bundle_error(data):
    try:
        found = references_in(data, "fuzz.onnx")
    except BundleError:
        return
    assert all(isinstance(location, str) for location in found)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), max_size=8), st.integers(0, len(SAMPLE))
)
def test_mutated_graphs_give_references_or_bundle_error(flips, cut):
    data = bytearray(SAMPLE)
    for index, value in flips:
        data[index] = value
    try:
        references_in(bytes(data[:cut]), "fuzz.onnx")
    except BundleError:
        pass


def test_the_unmutated_sample_names_its_data_file():
    assert references_in(SAMPLE, "sample.onnx") == ["model.onnx.data"]
