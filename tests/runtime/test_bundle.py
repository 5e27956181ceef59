"""Bundles are refused, with an error naming the file or field, whenever they do not match their manifest."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from fsync_recorder import record_fsyncs

from npcrl.errors import BundleError
from npcrl.runtime.bundle import describe_files, load_bundle, read_manifest, write_manifest
from npcrl.runtime.model import OnnxCausalLM


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def _edit_manifest(root: Path, **changes: object) -> None:
    data = json.loads((root / "manifest.json").read_text())
    data.update(changes)
    (root / "manifest.json").write_text(json.dumps(data))


def list_in_manifest(root: Path, name: str) -> None:
    """Re-list ``name`` (as it is now on disk) in the manifest, so only the content checks can refuse it."""
    manifest = read_manifest(root)
    manifest.files.update(describe_files(root, [name]))
    write_manifest(root, manifest)


def test_good_bundle_loads_and_has_a_stable_id(bundle_copy, tiny_bundle):
    assert load_bundle(bundle_copy).bundle_id == load_bundle(tiny_bundle).bundle_id
    assert len(load_bundle(bundle_copy).bundle_id) == 16


def test_flipped_byte_in_onnx_is_refused(bundle_copy):
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 does not match"):
        load_bundle(bundle_copy)


def test_truncated_file_is_refused_even_without_hashing(bundle_copy):
    path = bundle_copy / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"tokenizer\.json: size \d+ does not match"):
        load_bundle(bundle_copy, verify=False)


def test_missing_manifest(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(bundle_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="bundle directory does not exist"):
        load_bundle(tmp_path / "nope")


def test_manifest_that_is_not_json(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: cannot be read as JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", 99, "field 'format_version' = 99"),
        ("format", "something-else", "field 'format'"),
        ("content_hash", "0" * 64, "field 'content_hash'"),
        ("onnx_file", "other.onnx", "field 'onnx_file' = 'other.onnx' is not listed"),
        ("kv_cache", {"num_layers": "x"}, r"field 'kv_cache\."),
    ],
    ids=["version", "format", "content-hash", "onnx-file", "kv-cache"],
)
def test_malformed_manifest_fields_are_named(bundle_copy, field, value, message):
    _edit_manifest(bundle_copy, **{field: value})
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "name", ["../escape.onnx", "/etc/passwd.json", "sub/../../x.json"], ids=["dotdot", "absolute", "nested-dotdot"]
)
def test_paths_escaping_the_bundle_are_refused(bundle_copy, name):
    manifest = read_manifest(bundle_copy)
    manifest.files[name] = {"sha256": "0" * 64, "bytes": 1}
    write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="must be a plain relative path"):
        load_bundle(bundle_copy)


def test_symlink_escaping_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (bundle_copy / "link.json").symlink_to(outside)
    list_in_manifest(bundle_copy, "link.json")
    with pytest.raises(BundleError, match="outside the bundle directory"):
        load_bundle(bundle_copy)


def test_pickle_files_are_refused_by_type(bundle_copy):
    (bundle_copy / "weights.bin").write_bytes(pickle.dumps({"w": 1}))
    list_in_manifest(bundle_copy, "weights.bin")
    with pytest.raises(BundleError, match="pickled weights are never loaded"):
        load_bundle(bundle_copy)


def test_a_pickle_disguised_as_onnx_is_refused(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(pickle.dumps({"evil": True}))
    list_in_manifest(bundle_copy, "model.onnx")
    with pytest.raises(BundleError, match="looks like a Python pickle"):
        load_bundle(bundle_copy)


def test_garbage_onnx_with_matching_hash_fails_with_the_file_named(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"not an onnx graph at all")
    list_in_manifest(bundle_copy, "model.onnx")
    # Refused by the external-data reader before onnxruntime sees it, or by onnxruntime itself.
    with pytest.raises(
        BundleError, match=r"model\.onnx: (not a valid ONNX protobuf|onnxruntime cannot load this graph)"
    ):
        OnnxCausalLM(bundle_copy)


def test_kv_layout_that_disagrees_with_the_graph_is_refused(bundle_copy):
    manifest = read_manifest(bundle_copy)
    manifest.kv_cache = dataclasses.replace(manifest.kv_cache, num_layers=3)
    write_manifest(bundle_copy, manifest)  # a consistent manifest: only the graph check can catch it
    with pytest.raises(BundleError, match="graph interface does not match the manifest"):
        OnnxCausalLM(bundle_copy)


def test_the_manifest_is_written_durably(bundle_copy, monkeypatch):
    synced = record_fsyncs(monkeypatch)
    write_manifest(bundle_copy, read_manifest(bundle_copy))
    assert (bundle_copy / "manifest.json").stat().st_ino in synced  # the new content
    if os.name == "posix":
        assert bundle_copy.stat().st_ino in synced  # the rename
    assert not [p.name for p in bundle_copy.iterdir() if p.name.endswith(".tmp")]
    load_bundle(bundle_copy)  # still whole and valid
