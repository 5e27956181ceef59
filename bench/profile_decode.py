"""Where one decode step of the npcrl runtime goes: the graph, and everything around it.

Generates with the generation benchmark's prompt and sampling (temperature 0.7, top-p 0.9,
repetition penalty 1.1), streaming, with a stop string to match, and times each part of every
decode step by wrapping it:
  graph       onnxruntime's ``run_with_iobinding`` (the model itself)
  forward     the rest of ``OnnxCausalLM.forward``: argument checks, scheduler, KV slot pinning,
              binding the token, mask and logits buffer
  sampler     ``Sampler.sample``: penalty, temperature, top-p over the 49,152-token vocabulary, the draw
  streaming   incremental detokenising and stop-string matching
  loop        what is left of the step (the generation loop's own bookkeeping)
Then, in a second session with onnxruntime's profiler on, the graph's kernel time by operator
type, and the executor's time between kernels (profiling slows the graph, so that part is read
as shares, not milliseconds); and the graph time of one batched decode step of 1, 2, 4 and 8 rows.

Usage: python bench/profile_decode.py [--bundle DIR | --quant q8] [--tokens 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_generation import SAMPLING, _prompt_ids, ensure_bundle  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM, SessionOptions  # noqa: E402
from npcrl.runtime.sampler import Sampler, SamplerConfig  # noqa: E402
from npcrl.runtime.streaming import IncrementalDecoder, StopStringMatcher  # noqa: E402

STOP = ("\nTraveller:",)  # never produced here, so every token is matched against it to the end


class Timers:
    """Seconds per named part, per decode step."""

    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = defaultdict(list)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[name].append(time.perf_counter() - start)

        return timed


def instrument(model: OnnxCausalLM, timers: Timers) -> None:
    """Wrap the parts of a step (class attributes are patched: this process only profiles)."""
    model.session.run_with_iobinding = timers.wrap("graph", model.session.run_with_iobinding)  # type: ignore[method-assign]
    model.forward = timers.wrap("forward+graph", model.forward)  # type: ignore[method-assign]
    Sampler.sample = timers.wrap("sampler", Sampler.sample)  # type: ignore[method-assign]
    IncrementalDecoder.push = timers.wrap("detokenise", IncrementalDecoder.push)  # type: ignore[method-assign]
    StopStringMatcher.feed = timers.wrap("stop strings", StopStringMatcher.feed)  # type: ignore[method-assign]


def step_split(model: OnnxCausalLM, prompt: list[int], tokens: int, runs: int) -> dict[str, float]:
    """Mean milliseconds per decode step of each part (the prefill step left out)."""
    config = SamplerConfig(max_new_tokens=tokens, stop_strings=STOP, **SAMPLING)
    model.generate(prompt, config, ignore_eos=True).run()  # warm-up
    timers = Timers()
    instrument(model, timers)
    decode_s, decode_steps = 0.0, 0
    for run in range(runs):
        timers.parts.clear()
        generation = model.generate(prompt, config, ignore_eos=True)
        for _chunk in generation:  # streamed, as a game reads it
            pass
        result = generation.result
        assert result is not None
        decode_s += result.total_s - result.time_to_first_token_s
        decode_steps += len(result.token_ids) - 1
        for name in timers.parts:  # drop the first call of each part: it belongs to the prefill step
            timers.parts[name] = timers.parts[name][1:]
        if run == 0:
            kept = {name: list(values) for name, values in timers.parts.items()}
        else:
            for name, values in timers.parts.items():
                kept[name].extend(values)
    mean = {name: float(np.mean(values)) * 1e3 for name, values in kept.items()}
    split = {
        "step": decode_s / decode_steps * 1e3,
        "graph": mean["graph"],
        "forward": mean["forward+graph"] - mean["graph"],
        "sampler": mean["sampler"],
        "streaming": mean["detokenise"] + mean["stop strings"],
    }
    split["loop"] = split["step"] - sum(split[k] for k in ("graph", "forward", "sampler", "streaming"))
    return split


def sampler_parts(model: OnnxCausalLM, prompt: list[int], repeats: int = 500) -> dict[str, float]:
    """Microseconds per sample on the real logits of one generated line (each of its steps in
    turn): the full sampler, and without penalty or top-p."""
    line = model.generate(prompt, SamplerConfig(max_new_tokens=32, **SAMPLING), ignore_eos=True).run()
    rows = model.forward(prompt + line.token_ids, model.new_cache(), all_logits=True)[len(prompt) - 1 : -1]
    context = np.asarray(prompt)
    variants = {
        "sampler (penalty + top-p)": SamplerConfig(**SAMPLING),
        "without the repetition penalty": SamplerConfig(**{**SAMPLING, "repetition_penalty": 1.0}),
        "without top-p": SamplerConfig(**{**SAMPLING, "top_p": 1.0}),
        "greedy": SamplerConfig(temperature=0.0),
    }
    out = {}
    for name, config in variants.items():
        sampler = Sampler(config)
        for row in rows:
            sampler.sample(row, context)
        start = time.perf_counter()
        for i in range(repeats):
            sampler.sample(rows[i % len(rows)], context)
        out[name] = (time.perf_counter() - start) / repeats * 1e6
    return out


def operator_split(bundle: Path, prompt: list[int], tokens: int) -> tuple[dict[str, float], float]:
    """Share of profiled decode time per operator type (LM head apart), and the executor's share."""
    import onnxruntime as ort

    from npcrl.runtime import model as model_module

    with tempfile.TemporaryDirectory() as tmp:
        create = model_module.create_session

        def profiled(path: Path, options: SessionOptions) -> ort.InferenceSession:
            session = create(path, options)
            so = ort.SessionOptions()
            so.intra_op_num_threads = session.get_session_options().intra_op_num_threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

        model_module.create_session = profiled  # type: ignore[assignment]
        try:
            model = OnnxCausalLM(bundle, SessionOptions(verify_hashes=False))
        finally:
            model_module.create_session = create
        config = SamplerConfig(max_new_tokens=tokens, **SAMPLING)
        model.generate(prompt, config, ignore_eos=True).run()
        events = json.loads(Path(model.session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"][2:]  # past the first prefill and step
    steps = [r for r in runs if r["dur"] < 3 * np.median([x["dur"] for x in runs])]
    spans = [(r["ts"], r["ts"] + r["dur"]) for r in steps]
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if not any(lo <= event["ts"] <= hi for lo, hi in spans):
            continue
        op = event["args"].get("op_name", "?")
        if "lm_head" in event["name"]:
            op += " (LM head)"
        per_op[op] += event["dur"]
    run_total = sum(hi - lo for lo, hi in spans)
    shares = {op: us / run_total for op, us in per_op.items()}
    return shares, 1.0 - sum(shares.values())


def batched_steps(bundle: Path, prompt: list[int], rows: tuple[int, ...] = (1, 2, 4, 8)) -> dict[int, float]:
    """Milliseconds of graph time for one decode step of 1..8 pool rows at once (the batched pass
    the step scheduler runs for concurrent lines), each row after the prompt."""
    model = OnnxCausalLM(bundle, SessionOptions(verify_hashes=False, kv_slots=max(rows)))
    assert model.pool is not None
    caches = [model.pool.acquire(pin=True) for _ in range(max(rows))]
    for cache in caches:
        model.forward(prompt, cache)
    out = {}
    for count in rows:
        ids = np.full((count, 1), prompt[-1], dtype=np.int64)
        mask = np.ones((count, len(prompt) + 1), dtype=np.int64)
        times = []
        for _ in range(18):
            start = time.perf_counter()
            model._run_rows(0, count - 1, ids, mask, False)  # writes one position past each row's prompt
            times.append(time.perf_counter() - start)
        out[count] = float(np.median(times[3:])) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle directory (default: the q8 bundle, exported if missing)")
    parser.add_argument("--quant", default="q8", help="which default bundle without --bundle")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bundle = args.bundle or ensure_bundle(args.quant)
    prompt = _prompt_ids()
    model = OnnxCausalLM(bundle, SessionOptions(verify_hashes=False))
    micro = sampler_parts(model, prompt)
    split = step_split(model, prompt, args.tokens, args.runs)
    del model
    shares, executor = operator_split(bundle, prompt, args.tokens)
    batched = batched_steps(bundle, prompt)

    print(f"bundle {bundle}; prompt {len(prompt)} tokens, {args.tokens} new tokens x {args.runs} runs")
    print(f"decode step {split['step']:.2f} ms ({1e3 / split['step']:.1f} tok/s)")
    for part in ("graph", "forward", "sampler", "streaming", "loop"):
        print(f"  {part:10s} {split[part]:7.3f} ms  {split[part] / split['step'] * 100:5.1f}%")
    around = split["step"] - split["graph"]
    print(f"  around the graph: {around:.3f} ms ({around / split['step'] * 100:.1f}% of the step)")
    print("sampler on the logits of a real line's steps (us per call):")
    for name, us in micro.items():
        print(f"  {name:32s} {us:7.0f}")
    print("inside the graph (onnxruntime profiler; shares of the profiled run time):")
    for op, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        if share >= 0.002:
            print(f"  {op:36s} {share * 100:5.1f}%")
    print(f"  {'executor between kernels':36s} {executor * 100:5.1f}%")
    print("one batched decode step of several lines (graph only):")
    for count, ms in batched.items():
        print(
            f"  {count} rows: {ms:6.2f} ms per step, {count / ms * 1e3:5.0f} tok/s, {ms / batched[1]:4.2f}x one row's time"
        )


if __name__ == "__main__":
    main()
