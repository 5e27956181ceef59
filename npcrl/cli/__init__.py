"""The ``npcrl`` command line: one module per command group."""

from __future__ import annotations

from npcrl.cli.main import main

__all__ = ["main"]
