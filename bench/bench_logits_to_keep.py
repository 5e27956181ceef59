"""Prefill time with and without the graph's ``logits_to_keep`` input, side by side.

Copies the q8 bundle into the bench cache with the input taken out again (the graph then computes
the LM head for every prompt position, as bundles exported before it did), loads both, and
alternates: a 125-token prefill from an empty cache, then an 18-token prefill after it (the
player's words of a later turn). Everything else in the two graphs is identical.

Usage: python bench/bench_logits_to_keep.py [--rounds 12]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_generation import ensure_bundle  # noqa: E402
from exporters.logits_to_keep import remove_logits_to_keep  # noqa: E402
from npcrl.paths import user_cache_dir  # noqa: E402
from npcrl.runtime.bundle import Manifest, describe_files, load_bundle, write_manifest  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM, SessionOptions  # noqa: E402


def without_logits_to_keep(source: Path) -> Path:
    """A copy of the bundle at ``source`` whose LM head reads every position again."""
    target = user_cache_dir() / "bench" / f"{source.name}-every-logit"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    remove_logits_to_keep(target / "model.onnx")
    data = load_bundle(source, verify=False).manifest.to_dict()
    data.pop("content_hash")
    data["files"] = describe_files(target, list(data["files"]))
    write_manifest(target, Manifest.from_dict(data, str(target), check_hash=False))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    source = ensure_bundle("q8")
    models = {
        "logits_to_keep": OnnxCausalLM(source, SessionOptions(verify_hashes=False)),
        "every position": OnnxCausalLM(without_logits_to_keep(source), SessionOptions(verify_hashes=False)),
    }
    assert models["logits_to_keep"].keeps_logits and not models["every position"].keeps_logits
    prompt, later = list(range(200, 325)), list(range(500, 518))
    times: dict[str, dict[str, list[float]]] = {name: {"125": [], "18": []} for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            cache = model.new_cache()
            start = time.perf_counter()
            model.forward(prompt, cache)
            times[name]["125"].append(time.perf_counter() - start)
            start = time.perf_counter()
            model.forward(later, cache)
            times[name]["18"].append(time.perf_counter() - start)
    print(f"q8 bundle, median of {args.rounds} alternating rounds (ms)")
    print(f"{'LM head for':16s} {'125-token prefill':>17s} {'18 tokens after it':>18s}")
    for name, t in times.items():
        print(f"{name:16s} {np.median(t['125']) * 1e3:17.1f} {np.median(t['18']) * 1e3:18.1f}")
    keep, every = times["logits_to_keep"], times["every position"]
    ratio = {n: float(np.median(np.asarray(every[n]) / np.asarray(keep[n]))) for n in ("125", "18")}
    print(f"paired speed-up: {ratio['125']:.2f}x on 125 tokens, {ratio['18']:.2f}x on 18 tokens")


if __name__ == "__main__":
    main()
