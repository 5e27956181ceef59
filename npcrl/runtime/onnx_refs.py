"""The external-data files an ONNX graph will open, read from its protobuf without the onnx package.

onnxruntime opens every ``location`` that a tensor's ``external_data`` names, relative to the
graph's directory. A bundle must list (and so hash) each of them, so they are read here first —
before onnxruntime sees the graph — with a reader that walks only the messages that can hold
tensors: ``ModelProto.graph`` and ``.functions``, a graph's initializers, sparse initializers and
nodes, a node's attributes, and an attribute's tensors and subgraphs. The file is untrusted:
every length is checked against what is left of its message, nesting depth is bounded, and any
malformed input raises ``BundleError`` naming the file.
"""

from __future__ import annotations

import mmap
import posixpath
from collections.abc import Collection, Iterator
from pathlib import Path

from npcrl.errors import BundleError

# Message nesting (model > graph > node > attribute > graph ...): 3 levels per subgraph, so this
# allows about 20 nested control-flow graphs, far beyond what exporters write.
MAX_DEPTH = 64
MAX_LOCATION_BYTES = 4096
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# (message kind, field number) -> kind of the length-delimited submessage to walk into.
_CHILDREN: dict[tuple[str, int], str] = {
    ("model", 7): "graph",  # ModelProto.graph
    ("model", 25): "function",  # ModelProto.functions
    ("function", 7): "node",  # FunctionProto.node
    ("graph", 1): "node",  # GraphProto.node
    ("graph", 5): "tensor",  # GraphProto.initializer
    ("graph", 15): "sparse",  # GraphProto.sparse_initializer
    ("node", 5): "attribute",  # NodeProto.attribute
    ("attribute", 5): "tensor",  # AttributeProto.t
    ("attribute", 6): "graph",  # AttributeProto.g
    ("attribute", 10): "tensor",  # AttributeProto.tensors
    ("attribute", 11): "graph",  # AttributeProto.graphs
    ("attribute", 22): "sparse",  # AttributeProto.sparse_tensor
    ("attribute", 23): "sparse",  # AttributeProto.sparse_tensors
    ("sparse", 1): "tensor",  # SparseTensorProto.values
    ("sparse", 2): "tensor",  # SparseTensorProto.indices
}


class _Protobuf:
    """Bounds-checked reading of protobuf wire format from one buffer."""

    def __init__(self, buf: bytes | mmap.mmap, where: str) -> None:
        self.buf = buf
        self.where = where

    def fail(self, what: str, pos: int) -> BundleError:
        return BundleError(f"{self.where}: not a valid ONNX protobuf: {what} at byte {pos}")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        if pos < end and self.buf[pos] < 0x80:  # one-byte varints (most keys and lengths) fast
            return self.buf[pos], pos + 1
        result = shift = 0
        while True:
            if pos >= end:
                raise self.fail("truncated varint", pos)
            byte = self.buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.fail("varint longer than 10 bytes", pos)

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, a, b): a varint's value in a, a length-delimited span as [a, b)."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail("field number 0", pos)
            if wire == _VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value, pos
            elif wire in (_I64, _I32):
                pos += 8 if wire == _I64 else 4
                if pos > end:
                    raise self.fail(f"fixed-width field {number} runs past its message", pos)
            elif wire == _LEN:
                length, pos = self.varint(pos, end)
                if length > end - pos:
                    raise self.fail(f"field {number} claims {length} bytes, {end - pos} left", pos)
                yield number, wire, pos, pos + length
                pos += length
            else:
                raise self.fail(f"unsupported wire type {wire} (field {number})", pos)


class _Walker:
    def __init__(self, proto: _Protobuf) -> None:
        self.proto = proto
        self.locations: dict[str, None] = {}  # insertion-ordered set

    def walk(self, kind: str, start: int, end: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.proto.fail(f"messages nested deeper than {MAX_DEPTH}", start)
        if kind == "tensor":
            self.tensor(start, end)
            return
        for number, wire, a, b in self.proto.fields(start, end):
            child = _CHILDREN.get((kind, number))
            if child is None:
                continue
            if wire != _LEN:
                raise self.proto.fail(f"{kind} field {number} has wire type {wire}, expected a message", a)
            self.walk(child, a, b, depth + 1)

    def tensor(self, start: int, end: int) -> None:
        external = False
        location: str | None = None
        for number, wire, a, b in self.proto.fields(start, end):
            if number == 14 and wire == _VARINT:  # TensorProto.data_location
                external = a == _EXTERNAL
            elif number == 13:  # TensorProto.external_data: StringStringEntryProto
                if wire != _LEN:
                    raise self.proto.fail(f"tensor field 13 has wire type {wire}, expected a message", a)
                key, value = self.entry(a, b)
                if key == "location":
                    location = value
        if location is not None:
            self.locations[location] = None
        elif external:
            raise self.proto.fail("a tensor stored as external data names no location", start)

    def entry(self, start: int, end: int) -> tuple[str, str]:
        key = value = ""
        for number, wire, a, b in self.proto.fields(start, end):
            if wire == _LEN and number in (1, 2):
                if b - a > MAX_LOCATION_BYTES:
                    raise self.proto.fail(f"external_data entry of {b - a} bytes (at most {MAX_LOCATION_BYTES})", a)
                try:
                    text = bytes(self.proto.buf[a:b]).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise self.proto.fail("external_data entry is not UTF-8", a) from exc
                if number == 1:
                    key = text
                else:
                    value = text
        return key, value


def references_in(data: bytes | mmap.mmap, where: str) -> list[str]:
    """Every external-data location named in the serialized ModelProto ``data``, in order of appearance."""
    walker = _Walker(_Protobuf(data, where))
    walker.walk("model", 0, len(data), 0)
    return list(walker.locations)


def external_data_references(path: Path) -> list[str]:
    """Every external-data location the ONNX graph at ``path`` names (mapped, so weights stay on disk)."""
    try:
        with open(path, "rb") as handle:
            if path.stat().st_size == 0:
                return []
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return references_in(data, str(path))
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read: {exc}") from exc


def check_listed(location: str, listed: Collection[str], onnx_path: Path) -> str:
    """The manifest name of an external-data location; unlisted, absolute or '..' locations are refused."""
    normal = posixpath.normpath(location) if location else ""
    if (
        not location
        or "\\" in location
        or "\0" in location
        or location.startswith("/")
        or (len(location) > 1 and location[1] == ":")
        or ".." in location.split("/")
    ):
        raise BundleError(
            f"{onnx_path}: external data location {location[:200]!r} must be a plain relative path inside the bundle"
        )
    if normal not in listed:
        raise BundleError(
            f"{onnx_path}: the graph loads external data from {location[:200]!r}, which manifest.json does not "
            "list, so it is not covered by the bundle's hash; refusing to load it"
        )
    return normal
