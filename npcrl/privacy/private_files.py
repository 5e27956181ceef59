"""Files only their owner can read: directories 0700 and files 0600, whatever the umask.

Play logs hold what players said; the pseudonym key undoes the pseudonyms in them. Both are created
here with the owner's permissions only (POSIX modes; on Windows files inherit the ACL of their
folder, which these calls do not change). Existing directories are left as they are: a studio may
share a parent directory on purpose, and the files inside are private either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from npcrl.durable import create_new_file

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700. Raises OSError."""
    missing: list[Path] = []
    current = directory
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile; its mode is its creator's
        # mkdir's mode passes through the umask; chmod makes it exactly 0700 (still owner-usable).
        os.chmod(path, PRIVATE_DIR_MODE)


def create_private_file(path: Path) -> int:
    """A new file (never an existing one: FileExistsError) open for writing, mode 0600; returns
    the descriptor. The mode is given at creation, so no other user can open it even briefly."""
    return create_new_file(path, PRIVATE_FILE_MODE)
