"""The entry point of ``python -m game_demo`` and ``npcrl-demo``: options, logging, the frame loop."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from game_demo.cli import parse_args
from game_demo.view.app import App


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    app = App(options)
    if app.message is not None:
        print("\n".join(app.message), file=sys.stderr)  # also for a player who started it from a terminal
    try:
        app.run(options.frames)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return app.exit_code


if __name__ == "__main__":
    sys.exit(main())
