"""Command-line options of ``python -m game_demo`` / ``npcrl-demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npcrl import user_cache_dir


def positive_int(text: str) -> int:
    """argparse type for counts (the game does not load npcrl's command line for one helper)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def default_store() -> Path:
    return user_cache_dir() / "store"


def default_logs() -> Path:
    return user_cache_dir() / "playlogs"


@dataclass(frozen=True)
class GameOptions:
    bundle: Path | None = None
    """start with this bundle instead of the store's promoted one or the default export"""
    store: Path = field(default_factory=default_store)
    logs: Path = field(default_factory=default_logs)
    player_id: str = "player"
    threads: int | None = None
    """onnxruntime threads per forward pass (None: chosen for this machine, see ``session_options``)"""
    spin: bool | None = None
    """let idle onnxruntime threads busy-wait (None: chosen for this machine)"""
    fps: int = 60
    swap_poll_s: float = 2.0
    frames: int | None = None
    """stop after this many frames (smoke tests, benchmarks)"""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcrl-demo",
        description="Oakrest: a small village whose NPCs speak through npcrl. Walk up to an NPC and press E.",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle directory (default: the store's promoted bundle, else the default q8 export)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"bundle store to watch for promoted bundles (default: {default_store()})",
    )
    parser.add_argument("--logs", type=Path, default=None, help=f"play-log directory (default: {default_logs()})")
    parser.add_argument("--player", default="player", help="player id written to the play logs")
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="onnxruntime threads per forward pass (default: 1 on a 2-core machine, else npcrl's default)",
    )
    parser.add_argument(
        "--spin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let idle onnxruntime threads busy-wait (default: off on a 2-core machine)",
    )
    parser.add_argument("--fps", type=positive_int, default=60, help="frame-rate cap (default 60)")
    parser.add_argument("--swap-poll", type=_positive_float, default=2.0, help="seconds between store polls while idle")
    parser.add_argument("--frames", type=positive_int, help="quit after this many frames")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> GameOptions:
    args = build_parser().parse_args(argv)
    return GameOptions(
        bundle=args.bundle,
        store=args.store or default_store(),
        logs=args.logs or default_logs(),
        player_id=args.player,
        threads=args.threads,
        spin=args.spin,
        fps=args.fps,
        swap_poll_s=args.swap_poll,
        frames=args.frames,
    )
