"""``npcrl quickstart``: fetch the default model, export its bundle once, and let an NPC speak."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from npcrl.cli.args import add_command, add_sampler_args, sampler_from_args
from npcrl.cli.export import DEFAULT_QUANT, resolve_source
from npcrl.cli.generate import QUICKSTART_PERSONA, speak
from npcrl.paths import default_bundle_dir

QUICKSTART_LINES = (
    "Good morning! Can you fix my sword?",
    "What is the news in the village?",
)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from npcrl.runtime.bundle_migrate import migrate_if_old
    from npcrl.runtime.model import OnnxCausalLM

    bundle_dir = Path(args.bundle) if args.bundle else default_bundle_dir(DEFAULT_QUANT)
    if not args.bundle:
        migrate_if_old(bundle_dir)  # a cache filled by an earlier npcrl
    if not (bundle_dir / "manifest.json").is_file():
        from exporters.export import export_bundle

        export_bundle(resolve_source("default"), bundle_dir, quant=DEFAULT_QUANT)
    model = OnnxCausalLM(bundle_dir)
    print(f"bundle {model.bundle_id} ({bundle_dir})", file=sys.stderr)
    config = sampler_from_args(args)
    for line in QUICKSTART_LINES:
        print(f"\nPlayer: {line}\nBrom: ", end="", flush=True)
        speak(model, QUICKSTART_PERSONA, line, config)
    return 0


def add_quickstart_parser(subparsers: Any) -> None:
    quick = add_command(
        subparsers,
        "quickstart",
        "fetch + export the default model once, then let an NPC speak",
        "npcrl quickstart --seed 1",
    )
    quick.add_argument("--bundle", help=f"bundle directory (default: the user cache, {DEFAULT_QUANT})")
    add_sampler_args(quick)
    quick.set_defaults(func=cmd_quickstart)
