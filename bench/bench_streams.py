"""Many NPC lines at once: total tokens/s of N concurrent lines, npcrl vs llama.cpp.

npcrl: N threads each call ``generate`` on one shared ``OnnxCausalLM`` (default session options,
N KV slots), as N NPCs of a game would; the runtime's step scheduler merges their decode steps
into batched passes. llama.cpp (through llama-cpp-python, ``bench/llama_cpp_engine.py``): its own
parallel-sequence route, one context with a sequence id per line, all prompts in one batch, then
one batch per step. Both warm up with one short round of the same lines. Every line is the benchmark persona and a different player line (no prefix
shared, so both engines prefill every prompt), N new tokens each (EOS ignored), temperature 0.7,
top-p 0.9, repetition penalty 1.1, its own seed. Each engine runs in its own process; rounds
interleave the engines and the figures are medians.

*total tok/s* = every line's tokens / wall time from the start of all lines to the end of the
last one (prefills included); *all started* = when the last line had its first token.

Usage: python bench/bench_streams.py [--streams 8] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import llama_cpp_engine  # noqa: E402
from bench.bench_generation import PERSONA, SAMPLING, ensure_bundle  # noqa: E402
from bench.common import print_table  # noqa: E402
from npcrl.paths import default_model_dir, user_cache_dir  # noqa: E402
from npcrl.runtime.session import default_thread_count  # noqa: E402

PLAYER_LINES = [
    "Good morning! Can you fix my sword before nightfall? The blade is chipped.",
    "What is the news from the harvest fair this year?",
    "Do you know where I can find the guard captain Hedda?",
    "How much for a new pair of horseshoes?",
    "I heard wolves howling near the mill last night. Should I worry?",
    "Can you teach me how to temper steel?",
    "Is the innkeeper Mara a friend of yours?",
    "Which road leads to the next village, and is it safe?",
    "What was the finest thing you ever forged?",
    "Could you lend me a hammer until tomorrow?",
    "Why do you work so late every evening?",
    "Have you seen a traveller in a grey cloak pass by?",
    "What do the villagers think of the new miller?",
    "Is there work for a strong pair of hands here?",
    "Tell me a story about this village.",
    "Where did you learn your craft?",
]
ENGINES = {"npcrl-q8": "q8", "npcrl-q8-fast": "q8-fast", "llama.cpp-q8_0": "q8_0", "llama.cpp-q4_0": "q4_0"}


def prompts(count: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    out = []
    for i in range(count):
        line = PLAYER_LINES[i % len(PLAYER_LINES)]
        text = f"<|im_start|>system\n{PERSONA}<|im_end|>\n<|im_start|>user\n{line}<|im_end|>\n<|im_start|>assistant\n"
        out.append(tok.encode(text).ids)
    return out


def run_npcrl(bundle: str, lines: list[list[int]], tokens: int) -> dict:
    from npcrl.runtime.model import OnnxCausalLM, SessionOptions

    model = OnnxCausalLM(bundle, SessionOptions(kv_slots=max(8, len(lines)), verify_hashes=False))
    # Warm-up: the same lines once, briefly. The first concurrent round pays one-time costs (the KV
    # pool's pages touched, onnxruntime's arena grown for batched shapes) that a game pays once.
    speak_all(model, lines, 8)
    return speak_all(model, lines, tokens)


def speak_all(model: object, lines: list[list[int]], tokens: int) -> dict:
    """Every line at once, each from its own thread, as N NPCs of a game would."""
    from npcrl.runtime.sampler import SamplerConfig

    barrier = threading.Barrier(len(lines) + 1)
    results: list = [None] * len(lines)

    def speak(index: int) -> None:
        config = SamplerConfig(max_new_tokens=tokens, **{**SAMPLING, "seed": SAMPLING["seed"] + index})
        barrier.wait()
        results[index] = model.generate(lines[index], config, ignore_eos=True).run()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(lines))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    made = sum(len(r.token_ids) for r in results)
    return {"wall_s": wall, "tokens": made, "all_started_s": max(r.time_to_first_token_s for r in results)}


def child(engine: str, streams: int, tokens: int, out: Path) -> None:
    lines = prompts(streams)
    if engine.startswith("npcrl-"):
        result = run_npcrl(os.environ["NPCRL_BENCH_BUNDLE"], lines, tokens)
    else:
        path = Path(os.environ["NPCRL_BENCH_GGUF"])
        llama_cpp_engine.run_parallel(path, lines, 8, default_thread_count(), SAMPLING)  # warm-up, as for npcrl
        result = llama_cpp_engine.run_parallel(path, lines, tokens, default_thread_count(), SAMPLING)
        result["all_started_s"] = result.pop("prefill_s")
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-streams", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.child_streams, args.tokens, args.out)
        return
    engines = [e for e in args.engines.split(",") if e in ENGINES]
    missing = llama_cpp_engine.available()
    if missing:
        engines = [e for e in engines if not e.startswith("llama.cpp")]
        print(f"{missing}: the llama.cpp rows are skipped", file=sys.stderr)
    envs = {}
    for engine in engines:
        env = dict(os.environ)
        if engine.startswith("npcrl-"):
            env["NPCRL_BENCH_BUNDLE"] = str(ensure_bundle(ENGINES[engine]))
        else:
            env["NPCRL_BENCH_GGUF"] = str(llama_cpp_engine.gguf_path(ENGINES[engine]))
        envs[engine] = env
    work = user_cache_dir() / "bench" / "streams"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for engine in engines:
            for streams in (1, args.streams):
                out = work / f"{engine}-{streams}.json"
                cmd = [sys.executable, __file__, "--child", engine, "--child-streams", str(streams),
                       "--tokens", str(args.tokens), "--out", str(out)]  # fmt: skip
                subprocess.run(cmd, check=True, env=envs[engine])
                result = json.loads(out.read_text())
                runs.setdefault((engine, streams), []).append(result)
                rate = result["tokens"] / result["wall_s"]
                print(f"  round {round_index + 1}: {engine} x{streams} {rate:.1f} tok/s", file=sys.stderr, flush=True)
    report(runs, engines, args)


def report(runs: dict[tuple[str, int], list[dict]], engines: list[str], args: argparse.Namespace) -> None:
    rate = {key: float(np.median([r["tokens"] / r["wall_s"] for r in rs])) for key, rs in runs.items()}
    lines = prompts(args.streams)
    started = {key: float(np.median([r["all_started_s"] for r in rs])) for key, rs in runs.items()}
    print(
        f"\n{args.streams} concurrent lines of {args.tokens} tokens (and 1 alone), prompts of "
        f"{min(map(len, lines))}-{max(map(len, lines))} tokens; median of {args.rounds} "
        f"rounds; {default_thread_count()} threads"
    )
    header = f"{'engine':16s} {'lines':>5s} {'total tok/s':>11s} {'x 1 line':>8s} {'all started s':>13s} {'x llama.cpp':>11s}"
    rows = []
    for engine in engines:
        peer = {"npcrl-q8": "llama.cpp-q8_0", "npcrl-q8-fast": "llama.cpp-q4_0"}.get(engine)
        for streams in (1, args.streams):
            key = (engine, streams)
            versus = rate[key] / rate[(peer, streams)] if peer and (peer, streams) in rate else float("nan")
            rows.append(
                f"{engine:16s} {streams:5d} {rate[key]:11.1f} {rate[key] / rate[(engine, 1)]:8.2f} "
                f"{started[key]:13.2f} {versus:11.2f}"
            )
    print_table(header, rows)
    print("x llama.cpp: npcrl-q8 against llama.cpp Q8_0, npcrl-q8-fast against Q4_0, at the same number of lines")


if __name__ == "__main__":
    main()
