"""Where in a line the update's credit lands: a training run's ``report/turn_credit.jsonl`` read by
token position.

A logged line earns its reward at its end. Generalised advantage estimation carries it back toward
the line's first tokens with weight ``(gamma * lam) ** steps`` plus whatever the value head adds:
with ``lam = 0.95`` a token 60 steps before the end gets ``0.95 ** 60 = 0.05`` of it, so unless the
value head has learned what a line's opening is worth, the opening (which decides what the line is
about) gets a small share of the credit and the ending (a question, where the line stops) most of it.

For the run's iterations in ``--bands`` equal parts: how many turns were read, the standard
deviation of the first token's, the last token's and the mean advantage over the turns, and how
each follows the turn's reward (Pearson r). A first-token spread far below the last token's, or a
first-token r near 0, is credit that does not reach the start of the line.

Usage: python bench/credit_positions.py RUN/report/turn_credit.jsonl [--bands 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcrl.reward.model_metrics import pearson  # noqa: E402

POSITIONS = ("advantage_first", "advantage_last", "advantage_mean")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def bands(rows: list[dict], count: int) -> list[tuple[int, int, list[dict]]]:
    """The rows cut into ``count`` runs of iterations of (nearly) equal length: (first, last, rows)."""
    last = max(int(r["iteration"]) for r in rows)
    out = []
    for k in range(count):
        lo, hi = 1 + (last * k) // count, (last * (k + 1)) // count
        picked = [r for r in rows if lo <= int(r["iteration"]) <= hi]
        if picked:
            out.append((lo, hi, picked))
    return out


def reward_link(rewards: list[float], values: list[float]) -> str:
    """Pearson r of the rewards and one position's advantages, or "flat" when either does not vary
    (no r to give: a position whose advantage is the same on every turn)."""
    r = pearson(np.asarray(rewards), np.asarray(values))
    return "flat" if r is None else f"{r:+.2f}"


def table(rows: list[dict], count: int) -> list[str]:
    lines = [
        "| iterations | turns read | sd first | sd last | sd mean | r(reward, first) | r(reward, last) | r(reward, mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lo, hi, picked in bands(rows, count):
        rewards = [float(r["reward"]) for r in picked]
        columns = {p: [float(r[p]) for r in picked] for p in POSITIONS}
        sds = " | ".join(f"{statistics.pstdev(columns[p]):.3f}" for p in POSITIONS)
        rs = " | ".join(reward_link(rewards, columns[p]) for p in POSITIONS)
        lines.append(f"| {lo}–{hi} | {len(picked)} | {sds} | {rs} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("credit", help="a training run's report/turn_credit.jsonl")
    parser.add_argument("--bands", type=int, default=3, help="equal parts of the run's iterations (default 3)")
    args = parser.parse_args()
    path = Path(args.credit)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (a training run writes report/turn_credit.jsonl)")
    rows = read_rows(path)
    if not rows:
        raise SystemExit(f"{path}: no rows")
    print(f"{args.credit}: {len(rows)} rows, iterations 1–{max(int(r['iteration']) for r in rows)}")
    print("\n".join(table(rows, max(1, args.bands))))
    print("(advantages as the loss used them, whitened over each rollout's tokens)")


if __name__ == "__main__":
    main()
