"""``npcrl model fetch`` and ``npcrl export``: obtain a base model and turn it into a bundle (the
exporter needs npcrl[train], so it is imported only when a command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from npcrl.cli.args import add_command

DEFAULT_QUANT = "q8"


def resolve_source(source: str) -> str:
    """``default`` is SmolLM2-135M-Instruct, fetched into the user cache once; anything else as given."""
    if source == "default":
        from exporters.fetch import fetch_default_model

        return str(fetch_default_model())
    return source


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from exporters.fetch import fetch_default_model

    print(fetch_default_model(Path(args.dir) if args.dir else None, force=args.force))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from exporters.export import export_bundle

    bundle = export_bundle(
        resolve_source(args.source), args.out, quant=args.quant, overwrite=args.force, graph=args.graph
    )
    print(bundle.root)
    return 0


def add_export_parser(subparsers: Any) -> None:
    """Register ``model fetch`` and ``export``."""
    model = add_command(subparsers, "model", "obtain base models", "npcrl model fetch")
    fetch = add_command(
        model.add_subparsers(dest="model_command", required=True),
        "fetch",
        "fetch SmolLM2-135M-Instruct offline into the user cache; prints its path",
        "npcrl model fetch --dir models/smol",
    )
    fetch.add_argument("--dir", help="target directory (default: the user cache)")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    fetch.set_defaults(func=cmd_model_fetch)

    export = add_command(
        subparsers,
        "export",
        "export an HF causal LM to an npcrl bundle (needs npcrl[train])",
        "npcrl export default --out bundles/smol-q8 --quant q8",
    )
    export.add_argument("source", help="HF model directory, .gguf file, hub id, or 'default' for SmolLM2-135M-Instruct")
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument("--quant", choices=("fp32", "q8", "q8-fast", "q4"), default=DEFAULT_QUANT)
    export.add_argument("--force", action="store_true", help="replace an existing bundle")
    export.add_argument(
        "--graph",
        choices=("auto", "fused", "torch"),
        default="auto",
        help="fused (Llama family, fastest; needs onnxruntime-genai), torch (traced, any supported family), "
        "auto (fused where possible)",
    )
    export.set_defaults(func=cmd_export)
