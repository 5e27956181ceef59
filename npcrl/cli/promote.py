"""``npcrl promote`` and ``npcrl rollback``: choose the bundle games in a store pick up."""

from __future__ import annotations

import argparse
from typing import Any

from npcrl.cli.args import add_command
from npcrl.errors import NpcrlError


def cmd_promote(args: argparse.Namespace) -> int:
    from npcrl.loop.promotion import promote

    if args.repair:
        return repair_store(args)
    if args.bundle is None:
        raise NpcrlError("promote needs STORE and BUNDLE (or --repair STORE)")
    promotion = promote(args.store, args.bundle)
    print(f"promoted {promotion.bundle_id} ({promotion.bundle_dir}) in {args.store}")
    return 0


def repair_store(args: argparse.Namespace) -> int:
    from npcrl.loop.promotion import repair

    if args.bundle is not None:
        raise NpcrlError(f"promote --repair takes only STORE; it restores a bundle from HISTORY, not {args.bundle!r}")
    result = repair(args.store)
    for problem in result.problems:
        print(f"dropped: {problem}")
    if result.current is None:
        print(f"nothing promoted in {args.store} yet; nothing to repair")
    elif result.restored:
        print(f"repaired {args.store}: restored {result.current.bundle_id} ({result.current.bundle_dir})")
    else:
        print(f"{args.store} is sound: current {result.current.bundle_id} ({result.current.bundle_dir})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from npcrl.loop.promotion import rollback

    promotion = rollback(args.store)
    print(f"rolled back to {promotion.bundle_id} ({promotion.bundle_dir}) in {args.store}")
    return 0


def add_promote_parser(subparsers: Any) -> None:
    """Register ``promote`` and ``rollback``."""
    promote = add_command(
        subparsers,
        "promote",
        "make a bundle the one games in a store pick up (atomic)",
        "npcrl promote store runs/r1/bundle\nnpcrl promote store --repair",
    )
    promote.add_argument("store", help="bundle store directory (holds the CURRENT pointer)")
    promote.add_argument("bundle", nargs="?", help="bundle directory to promote (not with --repair)")
    promote.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a corrupt CURRENT from the newest HISTORY entry whose bundle still verifies",
    )
    promote.set_defaults(func=cmd_promote)
    rollback = add_command(subparsers, "rollback", "re-promote the store's previous bundle", "npcrl rollback store")
    rollback.add_argument("store")
    rollback.set_defaults(func=cmd_rollback)
