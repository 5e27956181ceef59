"""Whose turns a round learns from: simulated play logs broken down by the player profile of each turn.

A round's trainer weighs every logged NPC turn alike, so players who stay longer give it more
turns: in a mixed population the update leans toward the long talkers' tastes. For each profile
of the shipped ones (read back from the logs' pseudonyms with this machine's key, as
``bench/simulator_features.py`` does): its conversations, its turns and their share of all turns,
the mean credited turn reward, the mean of each line's noiseless score under its player's profile
(what the player thinks of it before the profile's noise) and how closely the reward follows that
score (Pearson r: near 0 where the player engages alike whatever the line, for example a profile
the base already pleases beyond its rating threshold), and for each feature the players react to,
the share of its lines with that feature and the mean reward of those lines minus the rest's. The
last block is the same over all profiles pooled, which is what a learner that cannot tell the
players apart sees.

With ``--credit`` (a training run's ``report/turn_credit.jsonl``, trained on these logs) a second
table gives what the update made of the same lines: per profile the mean advantage of its turns
(averaged over the turn's tokens and over every iteration that read it), and per feature the mean
advantage of its lines minus the rest's: a feature whose lines earned more reward but got less
advantage is one the update moved away from.

Usage: python bench/profile_turns.py LOGS [--features offers_quest,asks_back,mentions_lore,chatty]
       [--credit RUN/report/turn_credit.jsonl]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", help="play-log directory of simulated conversations (e.g. a loop round's logs/)")
    parser.add_argument("--features", default="offers_quest,asks_back,mentions_lore,chatty")
    parser.add_argument("--credit", help="a training run's report/turn_credit.jsonl, trained on LOGS")
    args = parser.parse_args()

    from simulator_features import logged_feature_rows

    from npcrl.agent.persona import builtin_personas
    from npcrl.sim.populations import shipped_profiles

    rows = logged_feature_rows(args.logs, builtin_personas())
    profiles = shipped_profiles()
    features = [name.strip() for name in args.features.split(",") if name.strip()]
    groups = defaultdict(list)
    for row in rows:
        groups[row.profile].append(row)
    print(f"{args.logs}: {len(rows)} scored NPC turns")
    print(
        "| players | conversations | turns (share) | reward / turn | score (mean) | r(reward, score) | "
        + " | ".join(features)
        + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(features))
    for name, group in [*sorted(groups.items()), ("all, pooled", rows)]:
        conversations = len({row.conversation_id for row in group})
        share = len(group) / len(rows)
        cells = [_score_cells(group, profiles), *(_feature_cell(group, feature) for feature in features)]
        print(
            f"| {name} | {conversations} | {len(group)} ({share:.0%}) | {_mean([r.reward for r in group]):+.3f} | "
            + " | ".join(cells)
            + " |"
        )
    print(
        "(score: each line's noiseless score under its player's profile, n/a for players no shipped profile names;"
        " feature cells: share of lines with it; their mean reward minus the other lines')"
    )
    if args.credit:
        _print_credit(groups, rows, features, _advantages(Path(args.credit)))


def _advantages(path: Path) -> dict[str, float]:
    """Turn key -> its advantage (token mean), averaged over the iterations that read it."""
    import json

    reads: dict[str, list[float]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        reads[row["turn"]].append(float(row["advantage_mean"]))
    return {key: _mean(values) for key, values in reads.items()}


def _print_credit(groups: dict, rows: list, features: list[str], advantages: dict[str, float]) -> None:
    print()
    print("| players | turns read | advantage / turn | " + " | ".join(features) + " |")
    print("|---|---|---|" + "---|" * len(features))
    for name, group in [*sorted(groups.items()), ("all, pooled", rows)]:
        read = [(row, advantages[f"{row.conversation_id}#{row.turn_index}"]) for row in group
                if f"{row.conversation_id}#{row.turn_index}" in advantages]  # fmt: skip
        if not read:
            print(f"| {name} | 0 | n/a |" + " n/a |" * len(features))
            continue
        cells = []
        for feature in features:
            with_it = [a for row, a in read if row.features[feature] > 0.5]
            without = [a for row, a in read if row.features[feature] <= 0.5]
            cells.append(f"{_mean(with_it) - _mean(without):+.3f}" if with_it and without else "n/a")
        print(f"| {name} | {len(read)} | {_mean([a for _, a in read]):+.3f} | " + " | ".join(cells) + " |")
    print("(feature cells: mean advantage of the lines with it minus the other lines'; held-out turns are never read)")


def _score_cells(group: list, profiles: dict) -> str:
    """The mean noiseless score of the group's lines and the Pearson r of their rewards with it
    (n/a where either side does not vary)."""
    import numpy as np

    from npcrl.reward.model_metrics import pearson

    scored = [(profiles[row.profile].score(row.features), row.reward) for row in group if row.profile in profiles]
    if not scored:
        return "n/a | n/a"
    scores, rewards = np.array(scored).T
    r = pearson(scores, rewards)
    return f"{scores.mean():+.2f} | " + (f"{r:+.2f}" if r is not None else "n/a")


def _feature_cell(group: list, feature: str) -> str:
    with_it = [row.reward for row in group if row.features[feature] > 0.5]
    without = [row.reward for row in group if row.features[feature] <= 0.5]
    if not with_it or not without:
        return f"{len(with_it) / len(group):.2f}; n/a"
    return f"{len(with_it) / len(group):.2f}; {_mean(with_it) - _mean(without):+.2f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
