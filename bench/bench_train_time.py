"""Side by side: ``npcrl train`` of this checkout against another one (e.g. an older commit), or
this checkout at two ``model.precision`` settings, or this checkout under two or more named sets of
config settings, on the same logs, bundle and seed, one run after the other.

Prints per run the wall and CPU time, the peak resident memory, the split by phase (from ``run.json``, when the checkout
records one) and the training result: each iteration's reward, KL, losses and clip fraction from
``report/metrics.jsonl``, with the largest difference between the runs (none may change between
checkouts that should train alike; between precisions it shows how far rounding moves them).

Usage: python bench/bench_train_time.py --logs LOGS --bundle BUNDLE --before-root OLD_CHECKOUT
           [--settings section.key=value,...] [--iterations 3] [--work DIR]
       python bench/bench_train_time.py --logs LOGS --bundle BUNDLE --precisions fp32,bf16 [...]
       python bench/bench_train_time.py --logs LOGS --bundle BUNDLE \
           --variant base:model.precision=bf16 \
           --variant grouped:model.precision=bf16,ppo.minibatch_order=by_prefix [...]
(each later run is compared with the first)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = ("reward_mean", "kl_per_turn", "policy_loss", "value_loss", "entropy", "clip_frac", "approx_kl")


def run_train(root: Path, logs: str, bundle: str, config: Path, out: Path) -> dict[str, Any]:
    """One ``npcrl train`` with the package of ``root``; its wall and CPU seconds, its peak resident
    memory and its records."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "npcrl.cli", "train", "--logs", logs, "--bundle", bundle]
    command += ["--out", str(out), "--config", str(config), "--no-progress"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own usage, not all children's so far
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    wall = time.perf_counter() - started
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    metrics = [json.loads(line) for line in (out / "report" / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        # Linux reports KiB, and counts from the size of this process when it started the child
        # (tens of MB: this script holds no model), so the figure is the training process's.
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
        "phases_s": record.get("phases_s"),
        "metrics": metrics,
    }


def largest_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, float]:
    return {key: max(abs(x[key] - y[key]) for x, y in zip(a, b, strict=True)) for key in RESULT_KEYS}


def variant_toml(settings: str, iterations: int) -> str:
    """The TOML of ``section.key=value,...`` settings plus ``[ppo] iterations``; values that are
    neither numbers nor true/false are written as strings."""
    sections: dict[str, list[str]] = {"ppo": [f"iterations = {iterations}"]}
    for setting in filter(None, settings.split(",")):
        key, _, value = setting.partition("=")
        section, _, field = key.strip().partition(".")
        if not field or not value:
            raise SystemExit(f"--variant setting {setting!r}: expected section.key=value")
        try:
            float(value)
            literal = value
        except ValueError:
            literal = value if value in ("true", "false") else json.dumps(value)
        sections.setdefault(section, []).append(f"{field} = {literal}")
    return "".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--bundle", required=True)
    compared = parser.add_mutually_exclusive_group(required=True)
    compared.add_argument("--before-root", help="a checkout of the trainer to compare against")
    compared.add_argument("--precisions", help="two model.precision values to compare, e.g. fp32,bf16")
    compared.add_argument(
        "--variant",
        action="append",
        help="NAME:section.key=value,... (repeat; two or more, each compared with the first)",
    )
    parser.add_argument("--settings", default="", help="with --before-root: section.key=value,... for both runs")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--work", help="directory for the runs' outputs (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="train-time-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.before_root:
        same = variant_toml(args.settings, args.iterations)
        runs = [("before", Path(args.before_root).resolve(), same), ("after", ROOT, same)]
    elif args.variant:
        if len(args.variant) < 2:
            parser.error("--variant takes two or more, e.g. --variant a:ppo.epochs=2 --variant b:ppo.epochs=1")
        named = [v.partition(":") for v in args.variant]
        runs = [(name, ROOT, variant_toml(settings, args.iterations)) for name, _, settings in named]
    else:
        names = args.precisions.split(",")
        if len(names) != 2:
            parser.error("--precisions takes two values, e.g. fp32,bf16")
        runs = [(name, ROOT, variant_toml(f"model.precision={name}", args.iterations)) for name in names]
    results = {}
    for name, root, toml in runs:
        config = work / f"{name}.toml"
        config.write_text(toml, encoding="utf-8")
        results[name] = run_train(root, args.logs, args.bundle, config, work / name)
        result = results[name]
        print(
            f"{name}: wall {result['wall_s']:.1f} s, cpu {result['cpu_s']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB",
            flush=True,
        )
    print(json.dumps({k: {x: y for x, y in v.items() if x != "metrics"} for k, v in results.items()}, indent=1))
    first = runs[0][0]
    before = results[first]
    for name, _, _ in runs[1:]:
        after = results[name]
        print(f"{name} against {first}:")
        print(f"speed-up: wall {before['wall_s'] / after['wall_s']:.2f}x, cpu {before['cpu_s'] / after['cpu_s']:.2f}x")
        for phase, seconds in (before["phases_s"] or {}).items():
            theirs = (after["phases_s"] or {}).get(phase)
            if theirs is not None and seconds > 1:
                ratio = f"{seconds / theirs:.2f}x" if theirs > 0 else "none left"
                print(f"  {phase}: {seconds:.1f} s -> {theirs:.1f} s ({ratio})")
        for row_a, row_b in zip(before["metrics"], after["metrics"], strict=True):
            print("iteration", row_a["iteration"], {k: (round(row_a[k], 6), round(row_b[k], 6)) for k in RESULT_KEYS})
            phases = [row.get("phases_s", {}) for row in (row_a, row_b)]
            print(
                "  wall s",
                (round(row_a["time_s"], 1), round(row_b["time_s"], 1)),
                "reference s",
                tuple(round(p.get("reference", 0.0), 1) for p in phases),
            )
        print("largest difference:", largest_difference(before["metrics"], after["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
