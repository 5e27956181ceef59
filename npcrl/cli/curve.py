"""``npcrl curve``: one loop round per number of conversations, from the same base and the same
players; the gain, KL and perplexity of each as a table and a plot (``npcrl.loop.curve``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from npcrl.cli.args import (
    add_command,
    add_concurrent_argument,
    add_persona_probe_argument,
    add_players_arguments,
    add_table_promote_when_argument,
    player_profiles,
)
from npcrl.loop.curve import CURVE_MD, CURVE_PNG, DEFAULT_SIZES
from npcrl.loop.decision import Guards


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated conversation counts, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--sizes must be counts of at least 1, got {text!r}")
    return values


def cmd_curve(args: argparse.Namespace) -> int:
    from npcrl.loop.curve import run_curve
    from npcrl.train.config import load_train_config

    points = run_curve(
        args.bundle,
        args.out,
        args.sizes,
        eval_conversations=args.eval_conversations,
        train_config=load_train_config(args.config),
        seed=args.seed,
        players=list(player_profiles(args).values()),
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrent,
        promote_when=args.promote_when,
        guards=Guards(persona_probe_lines=args.persona_probe_lines),
        resume=args.resume,
        same_play_as=args.same_play_as,
    )
    for point in points:
        mean, low, high = point.gain_percent
        print(
            f"{point.conversations:>6d} conversations: gain {mean:+.1f}% [{low:+.1f}, {high:+.1f}], "
            f"KL {point.kl_per_line:.2f} nats/line, perplexity {point.perplexity:.2f}, promoted {point.promoted}"
        )
    out = Path(args.out)
    print(f"table in {out / CURVE_MD}, plot in {out / CURVE_PNG}")
    return 0


def add_curve_parser(subparsers: Any) -> None:
    curve = add_command(
        subparsers,
        "curve",
        "a learning curve: one loop round from the base per number of conversations, each evaluated on the"
        " same players (gain with its paired interval, KL, perplexity; curve.md and curve.png)",
        "npcrl curve --bundle bundles/smol-q8 --out runs/curve --sizes 150,300,600,1200 --concurrency 8",
    )
    curve.add_argument("--bundle", required=True, help="the base bundle every round starts from")
    curve.add_argument("--out", required=True, help="output directory (base/, size-N/, curve.json/.md/.png)")
    curve.add_argument(
        "--sizes",
        type=sizes,
        default=list(DEFAULT_SIZES),
        help="conversations to train on, one round each (default 150,300,600,1200); the base plays the"
        " largest once and each round takes the first N of them",
    )
    curve.add_argument("--eval-conversations", type=int, default=96, help="evaluation players per bundle (default 96)")
    curve.add_argument("--config", help="training config TOML (docs/TRAINING.md); the same for every size")
    add_players_arguments(curve)
    curve.add_argument("--seed", type=int, default=0)
    curve.add_argument("--max-new-tokens", type=int, help="cap on each NPC line")
    add_table_promote_when_argument(curve)
    add_persona_probe_argument(curve)
    curve.add_argument(
        "--resume",
        action="store_true",
        help="go on with the curve in --out (same settings; --sizes may add sizes, and the base then plays only "
        "the new conversations)",
    )
    curve.add_argument(
        "--same-play-as",
        metavar="RUN",
        help="an earlier loop run with the same players, seeds and evaluation players (e.g. a population's"
        " folder of `npcrl populations`), or an earlier curve's --out: the base takes its play and base"
        " evaluation and plays only the conversations it lacks, and a size it played takes its round if it"
        " trained with these settings (with another --config, every size trains on that play)",
    )
    add_concurrent_argument(curve)
    curve.set_defaults(func=cmd_curve)
