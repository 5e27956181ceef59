"""Model bundles: a directory holding an ONNX graph, ``tokenizer.json`` and ``manifest.json``.

The manifest lists every file of the bundle with its size and sha256; the bundle's content hash
(its id in play logs) is the hash of that list. Loading re-hashes the files and refuses a bundle
whose files do not match, whose paths leave the bundle directory, or which holds anything but
ONNX, JSON and safetensors (no pickles, ever).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npcrl.errors import BundleError

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "npcrl-bundle"
BUNDLE_FORMAT_VERSION = 1
# Suffixes a bundle may hold. Everything else (.bin, .pt, .pkl, ...) may be a pickle: refused.
ALLOWED_SUFFIXES = (".onnx", ".onnx.data", ".json", ".safetensors")
_PICKLE_MAGIC = b"\x80"  # every pickle protocol >= 2 starts with PROTO (0x80)
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large ONNX files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: dict[str, dict[str, Any]]) -> str:
    """The bundle's identity: sha256 over the sorted (name, sha256) pairs of its files."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class KVLayout:
    """Shape of the KV cache the ONNX graph takes as ``past.*`` and returns as ``present.*``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float32"
    # Axis order of every past/present tensor.
    axes: tuple[str, ...] = ("batch", "kv_heads", "seq", "head_dim")
    # Graph tensor names; {layer} and {kind} (key/value) are filled in per tensor.
    past_name: str = "past.{layer}.{kind}"
    present_name: str = "present.{layer}.{kind}"
    # Whether the graph takes position_ids (the fused graph derives positions from attention_mask).
    position_ids: bool = True

    def past_names(self) -> list[str]:
        return [self.past_name.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def present_names(self) -> list[str]:
        return [self.present_name.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def bytes_per_token(self) -> int:
        itemsize = {"float32": 4, "float16": 2}[self.dtype]
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "axes": list(self.axes),
            "past_name": self.past_name,
            "present_name": self.present_name,
            "position_ids": self.position_ids,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> KVLayout:
        try:
            layout = cls(
                num_layers=int(data["num_layers"]),
                num_kv_heads=int(data["num_kv_heads"]),
                head_dim=int(data["head_dim"]),
                dtype=str(data.get("dtype", "float32")),
                axes=tuple(data.get("axes", cls.axes)),
                past_name=str(data.get("past_name", cls.past_name)),
                present_name=str(data.get("present_name", cls.present_name)),
                position_ids=bool(data.get("position_ids", True)),
            )
            layout.past_names()
            layout.present_names()
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"{where}: field 'kv_cache' is malformed: {exc!r}") from exc
        if layout.dtype not in ("float32", "float16"):
            raise BundleError(f"{where}: field 'kv_cache.dtype' = {layout.dtype!r} is not supported")
        if min(layout.num_layers, layout.num_kv_heads, layout.head_dim) < 1:
            raise BundleError(f"{where}: field 'kv_cache' has a non-positive size: {data}")
        return layout


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the runtime must know: where to stop, and which ids never reach the player."""

    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    # Every special/added-control token id (stripped from text, refused in player input).
    special_token_ids: tuple[int, ...] = ()
    special_token_strings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "eos_token_ids": list(self.eos_token_ids),
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "special_token_ids": list(self.special_token_ids),
            "special_token_strings": list(self.special_token_strings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> SpecialTokens:
        try:
            return cls(
                eos_token_ids=tuple(int(i) for i in data["eos_token_ids"]),
                bos_token_id=data.get("bos_token_id"),
                pad_token_id=data.get("pad_token_id"),
                special_token_ids=tuple(int(i) for i in data.get("special_token_ids", ())),
                special_token_strings=tuple(str(s) for s in data.get("special_token_strings", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: field 'special_tokens' is malformed: {exc!r}") from exc


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
        return content_hash(self.files)

    @property
    def bundle_id(self) -> str:
        """Short id used in logs and UIs: the first 16 hex digits of the content hash."""
        return self.content_hash[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "content_hash": self.content_hash,
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

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where}: field 'format' = {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        version = data.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{where}: field 'format_version' = {version!r}; this npcrl reads version {BUNDLE_FORMAT_VERSION}"
            )
        for key in ("files", "onnx_file", "tokenizer_file", "kv_cache", "special_tokens", "vocab_size"):
            if key not in data:
                raise BundleError(f"{where}: required field {key!r} is missing")
        files = data["files"]
        if not isinstance(files, dict) or not files:
            raise BundleError(f"{where}: field 'files' must be a non-empty object")
        for name, entry in files.items():
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int)
            ):
                raise BundleError(f"{where}: field 'files.{name}' needs 'sha256' (str) and 'bytes' (int)")
        manifest = cls(
            files=files,
            onnx_file=str(data["onnx_file"]),
            tokenizer_file=str(data["tokenizer_file"]),
            kv_cache=KVLayout.from_dict(data["kv_cache"], where),
            special_tokens=SpecialTokens.from_dict(data["special_tokens"], where),
            vocab_size=int(data["vocab_size"]),
            chat_template=data.get("chat_template"),
            model=dict(data.get("model") or {}),
            quantization=dict(data.get("quantization") or {"method": "none"}),
            parity=dict(data.get("parity") or {}),
            parent=data.get("parent"),
            provenance=dict(data.get("provenance") or {}),
        )
        for key in ("onnx_file", "tokenizer_file"):
            if getattr(manifest, key) not in files:
                raise BundleError(f"{where}: field {key!r} = {getattr(manifest, key)!r} is not listed in 'files'")
        stored = data.get("content_hash")
        if stored is not None and stored != manifest.content_hash:
            raise BundleError(
                f"{where}: field 'content_hash' = {stored!r} does not match the hash of the listed files "
                f"({manifest.content_hash!r}); the manifest was edited"
            )
        return manifest


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


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root}: not a model bundle ({MANIFEST_NAME} is missing)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: cannot be read as JSON: {exc}") from exc
    return Manifest.from_dict(data, str(path))


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Open a bundle directory and check it against its manifest.

    ``verify=True`` re-hashes every file (about 1 s per 500 MB); ``False`` checks only sizes, for
    callers that verified the same bundle moments ago.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    manifest = read_manifest(root)
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
    return Bundle(root=root, manifest=manifest)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (temp file + rename), so a crash never leaves half of one."""
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)


def describe_files(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The manifest's 'files' entry for files already written into the bundle."""
    return {name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size} for name in names}
