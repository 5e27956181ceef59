"""Which model bundle the game starts with, and what to tell a player who has none yet."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from npcrl import BundleError, current_bundle

log = logging.getLogger("game_demo.bundles")

QUICKSTART_COMMAND = "npcrl quickstart"


class PromotionLike(Protocol):
    """What the game reads of npcrl's ``Promotion``."""

    @property
    def bundle_id(self) -> str: ...
    @property
    def bundle_dir(self) -> Path: ...


@dataclass(frozen=True)
class BundleChoice:
    path: Path
    source: str
    """"--bundle", "store" or "default": shown to the player so a surprising model can be traced"""


def has_bundle(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def promoted_bundle(store: Path) -> PromotionLike | None:
    """What ``store`` has promoted now, or None (nothing promoted, or an unreadable pointer)."""
    try:
        return current_bundle(store)
    except BundleError as exc:
        log.warning("ignoring the bundle store: %s", exc)
        return None


def store_bundle_id(store: Path) -> str | None:
    """The id promoted in ``store`` now, or None (nothing promoted, or an unreadable pointer)."""
    promotion = promoted_bundle(store)
    return promotion.bundle_id if promotion is not None else None


def choose_bundle(explicit: Path | None, store: Path, default: Path) -> BundleChoice | None:
    """``--bundle`` if given, else the store's promoted bundle, else the default export; None if none exists.

    An explicit bundle is returned even if it is broken: loading it then reports exactly what is
    wrong, which helps more than silently falling back to another model.
    """
    if explicit is not None:
        return BundleChoice(explicit, "--bundle")
    promotion = promoted_bundle(store)
    if promotion is not None:
        if has_bundle(promotion.bundle_dir):
            return BundleChoice(promotion.bundle_dir, "store")
        log.warning("promoted bundle %s is gone from %s; trying the default", promotion.bundle_id, promotion.bundle_dir)
    if has_bundle(default):
        return BundleChoice(default, "default")
    return None


def first_start_message(default: Path) -> list[str]:
    """What the player reads when there is no model yet: the one command that makes one."""
    return [
        "No NPC model found.",
        "",
        "Run this once (it fetches SmolLM2-135M-Instruct and exports it, about 4 minutes):",
        f"    {QUICKSTART_COMMAND}",
        "or, to export only:",
        f"    npcrl export default --out {default}",
        "",
        "Then start the game again. Press any key to quit.",
    ]
