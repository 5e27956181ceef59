"""The byte layout of a play-log file: file header and record frames (see docs/PLAYLOG.md).

A file is ``MAGIC | u16 version | u16 reserved`` followed by frames
``u32 length | u32 crc32(kind byte + payload) | u8 kind | payload``, all little-endian. Every
payload is a msgpack map, so it is never empty and starts with a map marker; with kind 0 reserved
and payloads under 1 MiB, a frame header has a shape that the reader's resync can look for cheaply.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

from npcrl.errors import LogFormatError

MAGIC = b"NPCRLLOG"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<8sHH")
FRAME_HEADER = struct.Struct("<IIB")
# Records are KBs; the cap bounds reader memory and the CRC work a resync spends on a false candidate.
MAX_PAYLOAD_BYTES = (1 << 20) - 1
FILE_SUFFIX = ".npl"
# First bytes of a msgpack map: fixmap, map16, map32.
MAP_MARKERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
# A frame header seen from its third byte: length < 2**20 (byte 2 < 0x10, byte 3 == 0), any CRC,
# kind != 0, then a map marker. Offsets of a match are frame start + 2.
CANDIDATE = re.compile(rb"[\x00-\x0f]\x00....[^\x00][\x80-\x8f\xde\xdf]", re.DOTALL)
CANDIDATE_OFFSET = 2

_KIND_SEEDS = tuple(zlib.crc32(bytes((kind,))) for kind in range(256))
_FRAME_PACK = FRAME_HEADER.pack


def frame_crc(kind: int, payload: bytes | memoryview) -> int:
    """crc32 of the kind byte followed by the payload."""
    return zlib.crc32(payload, _KIND_SEEDS[kind])


def encode_frame(kind: int, payload: bytes) -> bytes:
    """One complete frame, ready to append."""
    if not 1 <= kind <= 255:
        raise LogFormatError(f"record kind must be 1..255, got {kind}")
    if not payload or payload[0] not in MAP_MARKERS:
        raise LogFormatError("a record payload must be a msgpack map")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise LogFormatError(f"record payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    return pack_frame(kind, payload)


def pack_frame(kind: int, payload: bytes) -> bytes:
    """encode_frame without its checks, for payloads that encode_record made (the append hot path)."""
    return _FRAME_PACK(len(payload), zlib.crc32(payload, _KIND_SEEDS[kind]), kind) + payload


def file_header() -> bytes:
    return FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0)


def check_file_header(data: bytes, path: Path) -> bool:
    """True when ``data`` holds a complete, supported header; False when it is a valid but
    incomplete prefix of one (a file just being created). Raises LogFormatError otherwise."""
    if len(data) < FILE_HEADER.size:
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise LogFormatError(f"{path}: not a play log (bad magic {bytes(data[: len(MAGIC)])!r})")
        return False
    magic, version, _reserved = FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise LogFormatError(f"{path}: not a play log (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise LogFormatError(
            f"{path}: play-log format version {version} is not supported (this npcrl reads version {FORMAT_VERSION})"
        )
    return True
