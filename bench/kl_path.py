"""How fast training runs move the policy: KL to the reference per turn against optimizer steps and
against training turns read, side by side for several ``npcrl train`` output directories.

Made to compare rollout sizes (``ppo.max_iterations_per_pass``): a run whose steps each see k times
the turns should reach a KL stop after about as many steps if the stop is to fall near the end of
its first pass. The KL is the mean over the last ``--window`` iterations, as ``ppo.kl_stop`` reads it.

Usage: python bench/kl_path.py [NAME=]RUN_DIR [[NAME=]RUN_DIR ...] [--window 5] [--every 10]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def optimizer_steps(records: list[dict[str, Any]], minibatch_turns: int) -> list[int]:
    """Optimizer steps taken by the end of each iteration: recorded by runs since the field existed,
    otherwise derived from the turns, the minibatch size and the epochs run (an epoch that
    ``ppo.kl_budget`` cut short counts whole, so an iteration with ``early_stopped`` may count more)."""
    steps, total = [], 0
    for record in records:
        if "optimizer_steps" in record:
            total = int(record["optimizer_steps"])
        else:
            total += math.ceil(record["turns"] / minibatch_turns) * int(record["epochs_run"])
        steps.append(total)
    return steps


def kl_path(run: Path, window: int) -> list[dict[str, float]]:
    """One row per iteration: optimizer steps, turns read (a turn read again in a later pass counts
    again, unlike the provenance's ``turns_read``) and the windowed KL per turn."""
    metrics = [json.loads(line) for line in (run / "report" / "metrics.jsonl").read_text().splitlines() if line]
    provenance_file = run / "report" / "provenance.json"
    recorded = json.loads((provenance_file if provenance_file.exists() else run / "run.json").read_text())
    config = recorded["config"]
    minibatch = int(recorded.get("minibatch_turns", config["ppo"]["minibatch_turns"]))
    steps = optimizer_steps(metrics, minibatch)
    rows, read = [], 0
    for i, record in enumerate(metrics):
        read += int(record["turns"])
        recent = metrics[max(0, i + 1 - window) : i + 1]
        kl = sum(float(r["kl_per_turn"]) for r in recent) / len(recent)
        rows.append({"iteration": i + 1, "steps": steps[i], "turns": read, "kl": kl})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="npcrl train output directories, each as NAME=DIR or DIR")
    parser.add_argument("--window", type=int, default=5, help="iterations the KL is averaged over (ppo.kl_stop_window)")
    parser.add_argument("--every", type=int, default=10, help="print a row every this many optimizer steps")
    args = parser.parse_args()
    paths = {}
    for run in args.runs:
        name, _, directory = run.rpartition("=")
        paths[name or directory] = kl_path(Path(directory), args.window)
    print(
        f"windowed KL per turn (last {args.window} iterations) by optimizer steps; turns read in brackets (re-reads counted)"
    )
    print(f"{'steps':>6}" + "".join(f"{name:>24}" for name in paths))
    last = max(rows[-1]["steps"] for rows in paths.values())
    for mark in range(args.every, last + args.every, args.every):
        cells = []
        for rows in paths.values():
            reached = [row for row in rows if row["steps"] <= mark]
            ended = mark - args.every >= rows[-1]["steps"]
            cells.append(f"{reached[-1]['kl']:.3f} ({reached[-1]['turns']:>5d})" if reached and not ended else "")
        print(f"{mark:>6d}" + "".join(f"{cell:>24}" for cell in cells))
    for name, rows in paths.items():
        end = rows[-1]
        print(
            f"{name}: {end['iteration']} iterations, {end['steps']} steps, {end['turns']} turns read, KL {end['kl']:.3f}"
        )


if __name__ == "__main__":
    main()
