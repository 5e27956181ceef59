"""The ``npcrl`` command line. Heavy imports (torch, transformers) happen inside the commands that
need them, so ``npcrl generate`` works with only the runtime installed."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from npcrl.cli.bundle import add_bundle_parser
from npcrl.cli.chat import add_chat_parser
from npcrl.cli.curve import add_curve_parser
from npcrl.cli.eval import add_eval_parser
from npcrl.cli.export import add_export_parser
from npcrl.cli.generate import add_generate_parser
from npcrl.cli.logs import add_logs_parser
from npcrl.cli.loop import add_loop_parser
from npcrl.cli.populations import add_populations_parser
from npcrl.cli.probe import add_probe_parser
from npcrl.cli.promote import add_promote_parser
from npcrl.cli.quickstart import add_quickstart_parser
from npcrl.cli.rewards import add_rewards_parser
from npcrl.cli.serve import add_serve_parser
from npcrl.cli.sim import add_simulate_parser
from npcrl.cli.train import add_train_parser
from npcrl.errors import NpcrlError

# In the order ``npcrl --help`` lists the commands.
COMMAND_GROUPS = (
    add_export_parser,
    add_bundle_parser,
    add_generate_parser,
    add_chat_parser,
    add_serve_parser,
    add_rewards_parser,
    add_train_parser,
    add_loop_parser,
    add_curve_parser,
    add_populations_parser,
    add_promote_parser,
    add_logs_parser,
    add_simulate_parser,
    add_eval_parser,
    add_probe_parser,
    add_quickstart_parser,
)

SIGPIPE_EXIT = 141
"""128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away (``npcrl ... | head``)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcrl",
        description=__doc__,
        epilog="Example:\n  npcrl quickstart\n  npcrl logs stats playlogs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add_group in COMMAND_GROUPS:
        add_group(sub)
    return parser


def run_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NpcrlError as exc:
        print(f"npcrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return run_command(argv)
        finally:
            # Output that fit in the buffer meets a closed pipe here, not in the interpreter's exit.
            sys.stdout.flush()
    except BrokenPipeError:
        return stdout_gone()


def stdout_gone() -> int:
    """The reader of stdout went away (``| head``): end quietly, as a Unix tool does. Whatever is
    still buffered goes to the null device, so the exit cannot fail on it again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (captured in-process): nothing to redirect
        pass
    finally:
        os.close(devnull)
    return SIGPIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
