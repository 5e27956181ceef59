"""Pseudonymous player ids: a keyed hash, so that play logs never hold a player's own id.

``pseudonym(player_id, key)`` is ``p-`` and the first 32 hex digits of HMAC-SHA256(key, player_id).
The same player gets the same pseudonym under one key, so rewards, training and evaluation still
group by player; without the key nobody can recompute one from a guessed id (a plain hash of an
account name or email could be matched against a list of candidates). 128 bits make a collision
between two players negligible (about 2**64 players before one is likely).

The key is 32 random bytes in a file of its own, mode 0600, by default in the user data directory
(``npcrl.paths.default_key_path``; ``NPCRL_KEY_FILE`` overrides), never beside the logs: whoever
copies the logs must not get the key with them. Lose the key and nobody can find a player's
conversations by their id any more (erasure by ``--player`` stops working for older logs), so a
studio backs it up with its other secrets.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from npcrl.durable import atomic_file
from npcrl.errors import NpcrlError
from npcrl.privacy.private_files import PRIVATE_FILE_MODE, make_private_dirs

PSEUDONYM_PREFIX = "p-"
KEY_BYTES = 32
MIN_KEY_BYTES = 16  # for keys passed in by a studio from its own secret store
_PSEUDONYM = re.compile(r"p-[0-9a-f]{32}")


class PseudonymKeyError(NpcrlError):
    """A pseudonym key (file or value) is missing, unreadable, exposed or of the wrong size."""


def check_key(key: bytes, source: str = "pseudonym_key") -> bytes:
    """``key`` if it can key the hash; else PseudonymKeyError naming ``source`` (never the key)."""
    if not isinstance(key, bytes):
        raise PseudonymKeyError(f"{source}: expected bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"{source}: a key of {len(key)} bytes is too short (at least {MIN_KEY_BYTES})")
    return key


def pseudonym(player_id: str, key: bytes) -> str:
    """The pseudonym of ``player_id`` under ``key``: ``p-`` + 32 hex digits."""
    digest = hmac.digest(check_key(key), player_id.encode("utf-8", "surrogatepass"), "sha256")
    return PSEUDONYM_PREFIX + digest[:16].hex()


def is_pseudonym(value: str) -> bool:
    """True for a string shaped like ``pseudonym``'s output (it is then never hashed again)."""
    return _PSEUDONYM.fullmatch(value) is not None


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The key in an existing key file; PseudonymKeyError naming the file when it is missing,
    exposed or of the wrong size."""
    key = _read_key(Path(path))
    if key is None:
        raise PseudonymKeyError(
            f"{path}: no pseudonym key file; without the key that wrote the logs, player ids cannot be"
            " matched to pseudonyms (restore it from a backup, or set NPCRL_KEY_FILE to where it is)"
        )
    return key


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path``, created first (32 random bytes, mode 0600, parents 0700) if there is
    none. Creation is atomic: the file appears with its whole content or not at all, and when
    several processes race, all of them end up with the one key that won."""
    path = Path(path)
    key = _read_key(path)
    if key is None:
        _create_key(path)
        key = load_key(path)
    return key


def _read_key(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PseudonymKeyError(f"{path}: cannot open the pseudonym key file ({exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PseudonymKeyError(f"{path}: the pseudonym key must be a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise PseudonymKeyError(
                f"{path}: the pseudonym key file has mode {stat.S_IMODE(info.st_mode):04o}, open to group or"
                " others; it must be 0600. If nobody else can have read it, run chmod 600 on it"
            )
        data = os.read(fd, KEY_BYTES + 1)  # a regular file: one read returns all of a 33-byte prefix
    except OSError as exc:
        raise PseudonymKeyError(f"{path}: cannot read the pseudonym key file ({exc})") from None
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise PseudonymKeyError(
            f"{path}: the pseudonym key file holds {len(data) if len(data) <= KEY_BYTES else 'more than 32'}"
            f" bytes, expected exactly {KEY_BYTES} (a truncated or foreign file; restore it from a backup)"
        )
    return data


def _create_key(path: Path) -> None:
    # Written whole under a temporary name, then linked into place (replace=False): a link never
    # replaces an existing file, so a racing process's key is kept and nobody reads half a key.
    try:
        make_private_dirs(path.parent)
        with atomic_file(path, mode=PRIVATE_FILE_MODE, replace=False) as file:
            file.write(secrets.token_bytes(KEY_BYTES))
    except FileExistsError:
        pass  # another process created the key first; load_key reads theirs
    except OSError as exc:
        raise PseudonymKeyError(f"{path}: cannot create the pseudonym key file ({exc})") from None
