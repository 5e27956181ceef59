"""Model bundles: a directory holding an ONNX graph, ``tokenizer.json`` and ``manifest.json``.

The manifest lists every file of the bundle with its size and sha256. The bundle's identity (its
content hash; the first 16 hex digits are the ``bundle_id`` in play logs) is the sha256 of the
whole manifest in canonical JSON, less the ``content_hash`` field itself: so it covers every byte
the runtime reads — the graph and all its external data and the tokenizer (through their listed
hashes) and every manifest setting (chat template, special tokens, KV layout, model numbers,
provenance). Loading re-hashes the files, refuses a manifest whose stored hash disagrees (an
edited manifest), a graph that loads external data the manifest does not list, paths that leave
the bundle directory, and anything but ONNX, JSON and safetensors (no pickles, ever).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import npcrl.runtime.manifest_fields as mf
from npcrl.durable import atomic_write
from npcrl.errors import BundleError
from npcrl.runtime.manifest_sections import KVLayout, SpecialTokens
from npcrl.runtime.onnx_refs import check_listed, external_data_references

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "npcrl-bundle"
# Version 2: the identity covers the whole manifest, not only the file list (version 1).
BUNDLE_FORMAT_VERSION = 2
MIGRATE_COMMAND = "python -m npcrl.runtime.bundle_migrate"
MAX_MANIFEST_BYTES = 16 << 20
# Suffixes a bundle may hold. Everything else (.bin, .pt, .pkl, ...) may be a pickle: refused.
ALLOWED_SUFFIXES = (".onnx", ".onnx.data", ".json", ".safetensors")
_PICKLE_MAGIC = b"\x80"  # every pickle protocol >= 2 starts with PROTO (0x80)
_HASH_CHUNK = 1 << 20
_IDENTITY_DOMAIN = b"npcrl-bundle-identity-v2\n"
_MANIFEST_KEYS = frozenset(
    {
        "format",
        "format_version",
        "content_hash",
        "files",
        "onnx_file",
        "tokenizer_file",
        "kv_cache",
        "special_tokens",
        "vocab_size",
        "chat_template",
        "model",
        "quantization",
        "parity",
        "parent",
        "provenance",
    }
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large ONNX files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(data: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, ASCII only."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def identity_hash(body: dict[str, Any]) -> str:
    """The bundle's identity: sha256 over the canonical JSON of the manifest less ``content_hash``."""
    return hashlib.sha256(_IDENTITY_DOMAIN + canonical_json(body)).hexdigest()


@dataclass
class Manifest:
    """Everything ``manifest.json`` says about a bundle. ``bundle_id`` is derived, never stored."""

    files: dict[str, dict[str, Any]]
    onnx_file: str
    tokenizer_file: str
    kv_cache: KVLayout
    special_tokens: SpecialTokens
    vocab_size: int
    chat_template: str | None
    model: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    parity: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return identity_hash(self.body())

    @property
    def bundle_id(self) -> str:
        """Short id used in logs and UIs: the first 16 hex digits of the content hash."""
        return self.content_hash[:16]

    def body(self) -> dict[str, Any]:
        """The manifest as JSON, less ``content_hash``: exactly what the identity covers."""
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "files": self.files,
            "onnx_file": self.onnx_file,
            "tokenizer_file": self.tokenizer_file,
            "kv_cache": self.kv_cache.to_dict(),
            "special_tokens": self.special_tokens.to_dict(),
            "vocab_size": self.vocab_size,
            "chat_template": self.chat_template,
            "model": self.model,
            "quantization": self.quantization,
            "parity": self.parity,
            "parent": self.parent,
            "provenance": self.provenance,
        }

    def to_dict(self) -> dict[str, Any]:
        body = self.body()
        head = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "content_hash": identity_hash(body)}
        return head | body

    @classmethod
    def from_dict(cls, data: Any, where: str, *, check_hash: bool = True) -> Manifest:
        """Parse and bound every field; ``check_hash=False`` (migration only) skips the stored hash."""
        _check_header(data, where)
        if check_hash and "content_hash" not in data:
            raise BundleError(f"{where}: required field 'content_hash' is missing")
        files_value = mf.mapping(data["files"], "files", where)
        if not files_value or len(files_value) > mf.MAX_FILES:
            raise BundleError(f"{where}: field 'files' must list 1 to {mf.MAX_FILES} files")
        files = {name: mf.file_entry(name, entry, where) for name, entry in files_value.items()}
        vocab_size = mf.integer(data["vocab_size"], "vocab_size", where, 1, mf.MAX_VOCAB)
        manifest = cls(
            files=files,
            onnx_file=mf.text(data["onnx_file"], "onnx_file", where, mf.MAX_NAME_CHARS),
            tokenizer_file=mf.text(data["tokenizer_file"], "tokenizer_file", where, mf.MAX_NAME_CHARS),
            kv_cache=KVLayout.from_dict(data["kv_cache"], where),
            special_tokens=SpecialTokens.from_dict(data["special_tokens"], where, vocab_size),
            vocab_size=vocab_size,
            chat_template=mf.optional_text(data.get("chat_template"), "chat_template", where),
            model=mf.model_info(data.get("model", {}), where),
            quantization=dict(mf.mapping(data.get("quantization", {"method": "none"}), "quantization", where)),
            parity=dict(mf.mapping(data.get("parity", {}), "parity", where)),
            parent=mf.optional_text(data.get("parent"), "parent", where, 64),
            provenance=dict(mf.mapping(data.get("provenance", {}), "provenance", where)),
        )
        for key in ("onnx_file", "tokenizer_file"):
            if getattr(manifest, key) not in files:
                raise BundleError(f"{where}: field {key!r} = {getattr(manifest, key)!r} is not listed in 'files'")
        stored = data.get("content_hash")
        if check_hash and stored != manifest.content_hash:
            raise BundleError(
                f"{where}: field 'content_hash' = {str(stored)[:80]!r} does not match "
                f"the hash of the manifest and its files ({manifest.content_hash!r}); the manifest was edited"
            )
        return manifest


def _check_header(data: Any, where: str) -> None:
    """Format, version, known keys only, required keys present."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: field 'format' = {str(data.get('format'))[:80]!r}, expected {BUNDLE_FORMAT!r}")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version == 1:
        raise BundleError(
            f"{where}: field 'format_version' = 1: this bundle was written by an older npcrl whose bundle id "
            "did not cover the chat template and manifest settings, so its id cannot be trusted. Migrate it "
            f"with `{MIGRATE_COMMAND} <bundle dir>` (checks its files, gives it a new id and records the old "
            "one), or export it again"
        )
    if isinstance(version, bool) or version != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{where}: field 'format_version' = {str(version)[:20]}; this npcrl reads version {BUNDLE_FORMAT_VERSION}"
        )
    mf.mapping(data, "manifest", where, _MANIFEST_KEYS)
    for key in ("files", "onnx_file", "tokenizer_file", "kv_cache", "special_tokens", "vocab_size"):
        if key not in data:
            raise BundleError(f"{where}: required field {key!r} is missing")


def _safe_member(root: Path, name: str, where: str) -> Path:
    """Resolve a manifest file name inside the bundle; refuse absolute paths, '..' and symlink escapes."""
    if not name or os.path.isabs(name) or "\\" in name or any(part in ("", "..") for part in name.split("/")):
        raise BundleError(f"{where}: file name {name!r} must be a plain relative path inside the bundle")
    if not name.endswith(ALLOWED_SUFFIXES):
        raise BundleError(
            f"{where}: file {name!r} has a type bundles may not hold (allowed: {', '.join(ALLOWED_SUFFIXES)}); "
            "pickled weights are never loaded"
        )
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"{where}: file {name!r} resolves to {path}, outside the bundle directory")
    return path


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: Manifest

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def onnx_path(self) -> Path:
        return self.root / self.manifest.onnx_file

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest.tokenizer_file


def read_manifest_json(root: Path) -> Any:
    """The parsed JSON of ``root/manifest.json``, size-bounded; any JSON value (checked by the caller)."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root}: not a model bundle ({MANIFEST_NAME} is missing)")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {size} bytes is too large for a manifest (at most {MAX_MANIFEST_BYTES})")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and over-long integer literals; RecursionError deep nesting.
        raise BundleError(f"{path}: cannot be read as JSON: {exc}") from exc


def read_manifest(root: Path) -> Manifest:
    return Manifest.from_dict(read_manifest_json(root), str(root / MANIFEST_NAME))


def verify_files(root: Path, manifest: Manifest, *, verify: bool = True) -> None:
    """Every listed file is inside ``root``, of an allowed type and size, and (``verify``) hash; the
    graph's external-data references are all listed. Nothing is handed to onnxruntime before this."""
    where = str(root / MANIFEST_NAME)
    for name, entry in manifest.files.items():
        member = _safe_member(root, name, where)
        if not member.is_file():
            raise BundleError(f"{where}: listed file {name!r} is missing from the bundle")
        size = member.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"{member}: size {size} does not match the manifest ({entry['bytes']} bytes)")
        with open(member, "rb") as handle:
            if handle.read(1) == _PICKLE_MAGIC and name.endswith(".onnx"):
                raise BundleError(f"{member}: looks like a Python pickle, not ONNX; refusing to load it")
        if verify and sha256_file(member) != entry["sha256"]:
            raise BundleError(f"{member}: sha256 does not match the manifest; the file was modified or corrupted")
    onnx_path = root / manifest.onnx_file
    for location in external_data_references(onnx_path):
        check_listed(location, manifest.files, onnx_path)


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Open a bundle directory and check it against its manifest.

    ``verify=True`` re-hashes every file (about 1 s per 500 MB); ``False`` checks only sizes, for
    callers that verified the same bundle moments ago.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    manifest = read_manifest(root)
    verify_files(root, manifest, verify=verify)
    return Bundle(root=root, manifest=manifest)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically and durably, so a crash never leaves half of one."""
    atomic_write(root / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")


def describe_files(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The manifest's 'files' entry for files already written into the bundle."""
    return {name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size} for name in names}
