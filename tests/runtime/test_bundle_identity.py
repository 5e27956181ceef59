"""A bundle's identity covers every byte the runtime reads; manifest numbers are bounded and checked
against the graph; external data the graph loads must be listed; old-format bundles are migrated."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from npcrl.errors import BundleError
from npcrl.runtime.bundle import Manifest, load_bundle, read_manifest, write_manifest

# The identity of a fixed manifest: if this changes, every bundle id in every play log changes.
GOLDEN_BODY: dict[str, Any] = {
    "format": "npcrl-bundle",
    "format_version": 2,
    "files": {
        "model.onnx": {"sha256": "a" * 64, "bytes": 10},
        "tokenizer.json": {"sha256": "b" * 64, "bytes": 20},
    },
    "onnx_file": "model.onnx",
    "tokenizer_file": "tokenizer.json",
    "kv_cache": {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16},
    "special_tokens": {"eos_token_ids": [2]},
    "vocab_size": 400,
    "chat_template": "{{ messages }}",
}
GOLDEN_CONTENT_HASH = "e3865afcc22f094297411a13feb823617e52cc624b31b9a641fa2bce2d39ae91"


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def _raw(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def _rewrite(root: Path, edit: Any) -> Manifest:
    """Apply ``edit`` to the manifest and write it back with a matching hash, as an honest tool would."""
    manifest = read_manifest(root)
    edit(manifest)
    write_manifest(root, manifest)
    return manifest


def test_golden_identity_of_a_fixed_manifest():
    manifest = Manifest.from_dict(GOLDEN_BODY, "golden", check_hash=False)
    assert manifest.content_hash == GOLDEN_CONTENT_HASH
    assert manifest.bundle_id == GOLDEN_CONTENT_HASH[:16]


def test_editing_the_chat_template_in_place_is_refused(bundle_copy):
    data = _raw(bundle_copy)
    data["chat_template"] = data["chat_template"].replace("<|im_start|>", "<|im_start|> ", 1)
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"field 'content_hash' .* the manifest was edited"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: setattr(m, "chat_template", (m.chat_template or "") + " "),
        lambda m: setattr(m, "special_tokens", dataclasses.replace(m.special_tokens, eos_token_ids=(1,))),
        lambda m: setattr(m, "kv_cache", dataclasses.replace(m.kv_cache, position_ids=not m.kv_cache.position_ids)),
        lambda m: setattr(m, "vocab_size", m.vocab_size + 1),
        lambda m: m.model.update(max_position_embeddings=128),
        lambda m: m.model.update(graph="torch" if m.model["graph"] == "fused" else "fused"),
        lambda m: setattr(m, "parent", "0123456789abcdef"),
        lambda m: m.provenance.update(tokenizer_lineage=["0123456789abcdef"]),
    ],
    ids=["chat-template", "eos", "position-ids", "vocab", "positions", "graph", "parent", "lineage"],
)
def test_every_manifest_setting_is_part_of_the_identity(bundle_copy, edit):
    before = load_bundle(bundle_copy).bundle_id
    _rewrite(bundle_copy, edit)
    assert load_bundle(bundle_copy).bundle_id != before


def test_an_unlisted_external_data_file_is_refused_before_onnxruntime(bundle_copy):
    assert "model.onnx.data" in read_manifest(bundle_copy).files  # the fused graph keeps its weights there
    _rewrite(bundle_copy, lambda m: m.files.pop("model.onnx.data"))
    with pytest.raises(BundleError, match=r"model\.onnx: the graph loads external data from 'model\.onnx\.data'"):
        load_bundle(bundle_copy, verify=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_layers", 1025),
        ("num_layers", 2.0),
        ("num_layers", True),
        ("num_kv_heads", 0),
        ("head_dim", "16"),
        ("position_ids", 1),
        ("past_name", "past.{layer.__class__}.{kind}"),
    ],
    ids=["layers-bound", "layers-float", "layers-bool", "kv-heads-zero", "head-dim-string", "bool-as-int", "format"],
)
def test_kv_cache_numbers_are_typed_and_bounded(bundle_copy, field, value):
    data = _raw(bundle_copy)
    data["kv_cache"][field] = value
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"field 'kv_cache\.{field}'"):
        load_bundle(bundle_copy, verify=False)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("vocab_size",), 1 << 30, "vocab_size"),
        (("vocab_size",), False, "vocab_size"),
        (("special_tokens", "eos_token_ids"), [400000], r"special_tokens\.eos_token_ids\[0\]"),
        (("special_tokens", "bos_token_id"), -1, r"special_tokens\.bos_token_id"),
        (("model", "max_position_embeddings"), 1 << 40, r"model\.max_position_embeddings"),
        (("files", "tokenizer.json", "bytes"), -5, r"files\.tokenizer\.json\.bytes"),
    ],
    ids=["vocab-bound", "vocab-bool", "eos-range", "bos-negative", "positions", "file-size"],
)
def test_other_manifest_numbers_are_bounded(bundle_copy, path, value, field):
    data = _raw(bundle_copy)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"field '{field}'"):
        load_bundle(bundle_copy, verify=False)


def test_a_billion_layers_is_refused_at_once_in_bounded_memory(bundle_copy):
    """Once a layer count of 1e9 built two billion tensor names (a hang, then MemoryError)."""
    data = _raw(bundle_copy)
    data["kv_cache"]["num_layers"] = 10**9
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from npcrl.runtime.bundle import load_bundle
        from npcrl.errors import BundleError
        try:
            load_bundle({str(bundle_copy)!r}, verify=False)
        except BundleError as exc:
            print("BundleError:", exc)
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root)
    assert "BundleError:" in proc.stdout and "field 'kv_cache.num_layers'" in proc.stdout, proc.stderr[-2000:]


def _kv(**changes: int) -> Any:
    return lambda m: setattr(m, "kv_cache", dataclasses.replace(m.kv_cache, **changes))


@pytest.mark.parametrize(
    ("name", "edit", "field"),
    [
        ("gpt2-fp32", _kv(head_dim=8), "kv_cache.head_dim"),
        ("gpt2-fp32", _kv(num_kv_heads=3), "kv_cache.num_kv_heads"),
        ("gpt2-fp32", lambda m: setattr(m, "vocab_size", m.vocab_size + 7), "vocab_size"),
        ("llama-fp32", _kv(num_kv_heads=3), "kv_cache.num_kv_heads"),
        ("llama-fp32", _kv(num_layers=1), "kv_cache.num_layers"),
        ("llama-q8", lambda m: setattr(m, "vocab_size", m.vocab_size - 1), "vocab_size"),
    ],
    ids=["traced-head-dim", "traced-kv-heads", "traced-vocab", "fused-kv-heads", "fused-layers", "fused-vocab"],
)
def test_manifest_numbers_are_checked_against_the_graph(tiny_bundles, tmp_path, name, edit, field):
    """Sizes the graph declares statically must equal the manifest's (the fused graph declares its
    head size symbolically, so there only the KV heads, layers and vocabulary are checked)."""
    from npcrl.runtime.model import OnnxCausalLM

    root = tmp_path / name
    shutil.copytree(tiny_bundles[name], root)
    _rewrite(root, edit)
    with pytest.raises(BundleError, match=rf"graph interface does not match the manifest.*field '{field}'"):
        OnnxCausalLM(root)


def _as_version_1(root: Path, chat_template: str | None = None) -> str:
    """Rewrite a bundle's manifest the way the version-1 format stored it; returns its version-1 id."""
    from npcrl.runtime.bundle_migrate import version1_content_hash

    data = _raw(root)
    data["format_version"] = 1
    data["content_hash"] = version1_content_hash(data["files"])
    if chat_template is not None:
        data["chat_template"] = chat_template  # version 1 did not cover the template
    (root / "manifest.json").write_text(json.dumps(data))
    return data["content_hash"][:16]


def test_a_version_1_bundle_is_refused_with_the_migration_named(bundle_copy):
    _as_version_1(bundle_copy)
    with pytest.raises(BundleError, match=r"'format_version' = 1.*python -m npcrl\.runtime\.bundle_migrate"):
        load_bundle(bundle_copy)


def test_migration_gives_a_new_id_and_keeps_the_old_one_for_training(bundle_copy):
    from npcrl.runtime.bundle_migrate import main

    old = _as_version_1(bundle_copy)
    assert main([str(bundle_copy)]) == 0
    bundle = load_bundle(bundle_copy)
    assert bundle.bundle_id != old
    assert bundle.manifest.provenance["migrated_from"] == {"format_version": 1, "bundle_id": old}
    assert old in bundle.manifest.provenance["tokenizer_lineage"]
    assert main([str(bundle_copy)]) == 0  # already current: verified, unchanged
    assert load_bundle(bundle_copy).bundle_id == bundle.bundle_id


def test_migration_refuses_tampered_files_and_edited_version_1_manifests(bundle_copy, capsys):
    from npcrl.runtime.bundle_migrate import main, migrate_bundle

    _as_version_1(bundle_copy)
    data = _raw(bundle_copy)
    data["content_hash"] = "0" * 64
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="the manifest was edited"):
        migrate_bundle(bundle_copy)
    _as_version_1(bundle_copy)
    tokenizer = bundle_copy / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes().replace(b"{", b"{ ", 1)[:-1])
    assert main([str(bundle_copy)]) == 1
    assert "tokenizer.json: sha256 does not match" in capsys.readouterr().err
    assert _raw(bundle_copy)["format_version"] == 1  # nothing written


def test_a_cached_version_1_bundle_is_migrated_by_the_cli_and_by_migrate_if_old(bundle_copy, tmp_path):
    from npcrl.cli.main import main as cli_main
    from npcrl.runtime.bundle_migrate import migrate_if_old

    old = _as_version_1(bundle_copy)
    assert cli_main(["bundle", "migrate", str(bundle_copy)]) == 0
    assert load_bundle(bundle_copy).manifest.provenance["migrated_from"]["bundle_id"] == old
    assert not migrate_if_old(bundle_copy)  # current already: left alone
    assert not migrate_if_old(tmp_path / "no-bundle-here")
    _as_version_1(bundle_copy)
    assert migrate_if_old(bundle_copy)
    load_bundle(bundle_copy)
