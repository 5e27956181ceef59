"""npcrl."""

from npcrl import _moved

_moved.install()
