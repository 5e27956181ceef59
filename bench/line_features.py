"""What a trained bundle says differently: the simulated players' view of its lines beside the base's.

For each play-log directory (e.g. a loop round's ``eval/current`` and ``eval/candidate``, which the
same evaluation players played), every scored NPC line's simulator features
(``npcrl.sim.logged_features``: what the simulated players react to) and the line's length in
words: each feature's mean and the share of lines where it is above zero, one column per directory. It
reads what a population's players were given to reward (``asks_back``, ``mentions_lore``, ...)
against what the trainer changed.

Usage: python bench/line_features.py eval/current eval/candidate [--personas DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEAKS_OF_ITSELF = re.compile(r"\b(?:I['\u2019]m|I am|my name|call me)\b", re.IGNORECASE)


def speaks_of_itself_share(log_dir: Path) -> float:
    """The share of the NPC lines in ``log_dir`` (each turn once) in which the NPC speaks of itself."""
    from npcrl.playlog import LogReader, NpcTurn

    lines = {(r.conversation_id, r.turn_index): r.text for r in LogReader(log_dir) if isinstance(r, NpcTurn)}
    return sum(bool(SPEAKS_OF_ITSELF.search(text)) for text in lines.values()) / max(1, len(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="play-log directories, one column each")
    parser.add_argument("--personas", default=None, help="persona directory (default: the built-in NPCs)")
    args = parser.parse_args()

    from npcrl.agent.persona import builtin_personas, load_personas
    from npcrl.sim.features import FEATURES
    from npcrl.sim.logged_features import logged_line_features

    personas = load_personas(args.personas) if args.personas else builtin_personas()
    columns = []
    for logs in args.logs:
        found = logged_line_features(Path(logs), personas)
        column = {"lines": float(found.lines)}
        for name in FEATURES:
            column[f"{name} mean"] = found.means[name]
            column[f"{name} > 0"] = found.above_zero[name]
        column["words per line"] = found.means["words"]
        column["speaks of itself > 0"] = speaks_of_itself_share(Path(logs))
        columns.append(column)
    names = [Path(p).name or p for p in args.logs]
    print(f"{'':24}" + "".join(f"{n:>14}" for n in names))
    for key in columns[0]:
        print(f"{key:24}" + "".join(f"{c[key]:14.3f}" for c in columns))


if __name__ == "__main__":
    main()
