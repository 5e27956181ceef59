"""``npcrl bundle info | migrate``: verify a bundle and print its manifest, or bring old bundles to
the current format."""

from __future__ import annotations

import argparse
import json
from typing import Any

from npcrl.cli.args import add_command


def cmd_bundle_info(args: argparse.Namespace) -> int:
    from npcrl.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=True)
    data = bundle.manifest.to_dict()
    data["bundle_id"] = bundle.bundle_id
    data.pop("chat_template", None)
    print(json.dumps(data, indent=2))
    return 0


def cmd_bundle_migrate(args: argparse.Namespace) -> int:
    from npcrl.runtime.bundle_migrate import main as migrate_main

    return migrate_main(list(args.bundles))


def add_bundle_parser(subparsers: Any) -> None:
    """Register ``bundle info`` and ``bundle migrate``."""
    bundle = add_command(subparsers, "bundle", "inspect bundles", "npcrl bundle info bundles/smol-q8")
    sub = bundle.add_subparsers(dest="bundle_command", required=True)
    info = add_command(sub, "info", "verify a bundle and print its manifest", "npcrl bundle info bundles/smol-q8")
    info.add_argument("bundle")
    info.set_defaults(func=cmd_bundle_info)
    migrate = add_command(
        sub,
        "migrate",
        "bring format-version-1 bundles to the current format (their id then covers the whole manifest)",
        "npcrl bundle migrate bundles/smol-q8",
        description="Verify each bundle against its old id and rewrite its manifest in the current format; "
        "the old id is kept in provenance so its play logs still train.",
    )
    migrate.add_argument("bundles", nargs="+", help="bundle directories")
    migrate.set_defaults(func=cmd_bundle_migrate)
