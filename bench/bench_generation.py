"""Generation speed and quality, side by side on one machine and one prompt.

Engines (each measured in its own subprocess, so peak RSS is its own):
  hf            transformers ``generate`` (torch fp32, KV cache), the baseline
  npcrl-fp32    npcrl runtime on the fp32 bundle          (fused graph)
  npcrl-q8      npcrl runtime on the q8 bundle (default)  (fused graph, 8-bit weights)
  npcrl-q8-fast npcrl runtime on the q8-fast bundle         (fused graph, 8-bit weights in blocks of 64)
  npcrl-q4      npcrl runtime on the q4 bundle            (fused graph, 4-bit weights)
  npcrl-traced-q8  npcrl runtime on a torch-traced q8 bundle (only with --traced)
  genai-int4    onnxruntime-genai int4, our own sampler every step (get_logits → sample → append_tokens)
  genai-int8    the same at int8
  llama.cpp-q8_0, llama.cpp-q4_0, llama.cpp-q4_k_m
                llama.cpp through llama-cpp-python (the ``bench`` extra), its own sampler, on GGUF
                files converted and quantised by llama.cpp's own tools from the same fp32 weights
                (``bench/llama_cpp_engine.py``)
Every engine samples with the same settings (temperature 0.7, top-p 0.9, repetition penalty 1.1,
seed 0) and generates exactly N tokens (EOS ignored), so decode speeds compare like for like.
Quality: KL(torch fp32 || engine) and top-1 agreement, teacher-forced on one fixed sequence.
Every engine runs with the same thread count (npcrl's default: the usable cores, at most 4).
*prefill tok/s* is the prompt's tokens over the time to first token; *limit tok/s* is the
machine's measured read bandwidth over the bytes one decode step must read (the physical bound).

Usage: python bench/bench_generation.py [--tokens 48] [--rounds 3] [--repeats 2] [--traced] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import llama_cpp_engine  # noqa: E402
from bench.bandwidth import graph_weight_bytes, memory_bandwidth_gbs  # noqa: E402
from bench.common import print_table  # noqa: E402
from exporters.parity import log_softmax  # noqa: E402
from npcrl.paths import default_bundle_dir, default_model_dir, user_cache_dir  # noqa: E402
from npcrl.runtime.session import default_thread_count  # noqa: E402

PERSONA = (
    "You are Brom, the blacksmith of the village of Oakrest. You are gruff but kind, proud of your craft, and you "
    "speak in short plain sentences. You know the guard captain Hedda, the innkeeper Mara and the miller. The harvest "
    "fair is coming and everyone wants new tools. Stay in character and never mention that you are an AI. Keep answers "
    "to one or two sentences, and ask the traveller something back when you can."
)
PLAYER = "Good morning! Can you fix my sword before nightfall? The blade is chipped."
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0}


def _prompt_ids() -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    text = f"<|im_start|>system\n{PERSONA}<|im_end|>\n<|im_start|>user\n{PLAYER}<|im_end|>\n<|im_start|>assistant\n"
    return tok.encode(text).ids


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- engines (run in a subprocess)


def run_hf(prompt: list[int], tokens: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(default_thread_count())
    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    kwargs = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.1, pad_token_id=2)

    def timed(n: int) -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        return time.perf_counter() - start

    timed(4)  # warm-up
    ttft, full = [], []
    for _ in range(repeats):
        ttft.append(timed(1))
        full.append(timed(tokens))
    t1, tn = float(np.median(ttft)), float(np.median(full))
    return {"ttft_s": t1, "decode_tok_s": (tokens - 1) / (tn - t1), "peak_rss_mb": _rss_mb()}


def run_npcrl(bundle: str, prompt: list[int], tokens: int, repeats: int) -> dict:
    from npcrl.runtime.model import OnnxCausalLM
    from npcrl.runtime.sampler import SamplerConfig

    model = OnnxCausalLM(bundle)
    config = SamplerConfig(max_new_tokens=tokens, **SAMPLING)
    model.generate_text(prompt, SamplerConfig(max_new_tokens=4, **SAMPLING))  # warm-up
    runs = [model.generate(prompt, config, ignore_eos=True).run() for _ in range(repeats)]
    reference = _reference_sequence(prompt)
    logits = model.forward(reference, model.new_cache(), all_logits=True)
    return {
        "ttft_s": float(np.median([r.time_to_first_token_s for r in runs])),
        "decode_tok_s": float(np.median([r.decode_tokens_per_s for r in runs])),
        "peak_rss_mb": _rss_mb(),
        "tokens": len(runs[0].token_ids),
        "sample": model.tokenizer.decode(runs[0].token_ids)[:120],
        "logits": logits,
    }


def genai_model_dir(precision: str) -> Path:
    """Build (once) onnxruntime-genai's own model folder for SmolLM2 at ``precision``."""
    target = user_cache_dir() / "bench" / f"genai-{precision}"
    if not (target / "genai_config.json").is_file():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(default_model_dir()), "-o",
               str(target), "-p", precision, "-e", "cpu", "-c", str(target.parent / "genai-cache"),
               "--extra_options", "accuracy_level=4", "block_size=32"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
    return target


def run_genai(precision: str, prompt: list[int], tokens: int, repeats: int) -> dict:
    import onnxruntime_genai as og

    from npcrl.runtime.sampler import Sampler, SamplerConfig

    path = genai_model_dir(precision)
    model = og.Model(str(path))
    max_length = len(prompt) + tokens + 8  # the default (8192) preallocates ~350 MB of KV

    def one_run() -> tuple[float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        generator = og.Generator(model, params)
        sampler = Sampler(SamplerConfig(max_new_tokens=tokens, **SAMPLING))
        context = list(prompt)
        start = time.perf_counter()
        generator.append_tokens(np.asarray([prompt], dtype=np.int32))
        first = 0.0
        for i in range(tokens):
            logits = generator.get_logits()[0, -1]
            token = sampler.sample(logits, np.asarray(context)).token_id
            context.append(token)
            if i == 0:
                first = time.perf_counter()
            if i < tokens - 1:
                generator.append_tokens(np.asarray([[token]], dtype=np.int32))
        end = time.perf_counter()
        return first - start, (tokens - 1) / (end - first)

    one_run()  # warm-up
    runs = [one_run() for _ in range(repeats)]
    # Quality: genai runs exactly this graph; score it with plain onnxruntime for full logits.
    import onnxruntime as ort

    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = _reference_sequence(prompt)
    feeds = {"input_ids": np.asarray([reference], np.int64), "attention_mask": np.ones((1, len(reference)), np.int64)}
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values"):
            feeds[inp.name] = np.zeros((1, 3, 0, 64), np.float32)
    logits = session.run(["logits"], feeds)[0][0]
    return {
        "ttft_s": float(np.median([r[0] for r in runs])),
        "decode_tok_s": float(np.median([r[1] for r in runs])),
        "peak_rss_mb": _rss_mb(),
        "logits": logits,
    }


def _reference_sequence(prompt: list[int]) -> list[int]:
    """The prompt plus a fixed 32-token continuation (read from the cache the parent wrote)."""
    return json.loads(Path(os.environ["NPCRL_BENCH_REF"]).read_text())["sequence"]


def child_main(engine: str, tokens: int, repeats: int, out: Path) -> None:
    prompt = _prompt_ids()
    if engine == "hf":
        result = run_hf(prompt, tokens, repeats)
    elif engine.startswith("npcrl-"):
        result = run_npcrl(os.environ["NPCRL_BENCH_BUNDLE"], prompt, tokens, repeats)
    elif engine.startswith("llama.cpp-"):
        gguf = Path(os.environ["NPCRL_BENCH_GGUF"])
        reference = _reference_sequence(prompt)
        result = llama_cpp_engine.run(gguf, prompt, reference, tokens, repeats, default_thread_count(), SAMPLING)
        result["peak_rss_mb"] = _rss_mb()
    else:
        result = run_genai(engine.split("-")[1], prompt, tokens, repeats)
    logits = result.pop("logits", None)
    if logits is not None:
        np.save(out.with_suffix(".npy"), logits)
    out.write_text(json.dumps(result))


# ---------------------------------------------------------------- orchestration


def ensure_bundle(quant: str, graph: str = "fused") -> Path:
    from exporters.export import export_bundle

    path = default_bundle_dir(quant) if graph == "fused" else user_cache_dir() / "bench" / f"traced-{quant}"
    if not (path / "manifest.json").is_file():
        export_bundle(default_model_dir(), path, quant=quant, graph=graph)
    return path


def reference_logits(prompt: list[int], work: Path) -> np.ndarray:
    """torch fp32 logits on the prompt plus its greedy 32-token continuation (the quality reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32).eval()
    with torch.no_grad():
        sequence = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=2)[0]
        logits = model(input_ids=sequence[None]).logits[0].numpy()
    (work / "reference.json").write_text(json.dumps({"sequence": sequence.tolist()}))
    return logits


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all engines, interleaved")
    parser.add_argument("--traced", action="store_true", help="also measure a torch-traced (unfused) q8 bundle")
    parser.add_argument("--engines", help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def chosen_engines(args: argparse.Namespace) -> list[str]:
    engines = ["hf", "npcrl-fp32", "npcrl-q8", "npcrl-q8-fast", "npcrl-q4", "genai-int4", "genai-int8"]
    engines += [f"llama.cpp-{quant}" for quant in llama_cpp_engine.QUANTS]
    if args.traced:
        engines.insert(5, "npcrl-traced-q8")
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        engines = [e for e in engines if not e.startswith("genai")]
        print("onnxruntime-genai is not installed: its rows are skipped", file=sys.stderr)
    missing = llama_cpp_engine.available()
    if missing:
        engines = [e for e in engines if not e.startswith("llama.cpp")]
        print(f"{missing}: the llama.cpp rows are skipped", file=sys.stderr)
    if args.engines:
        engines = [e for e in engines if e in args.engines.split(",")]
    return engines


def engine_envs(engines: list[str], work: Path) -> dict[str, dict[str, str]]:
    """Each engine's subprocess environment; builds the bundles and genai folders it needs."""
    envs: dict[str, dict[str, str]] = {}
    for engine in engines:
        env = dict(os.environ, NPCRL_BENCH_REF=str(work / "reference.json"))
        if engine.startswith("npcrl-traced-"):
            env["NPCRL_BENCH_BUNDLE"] = str(ensure_bundle(engine.removeprefix("npcrl-traced-"), "torch"))
        elif engine.startswith("npcrl-"):
            env["NPCRL_BENCH_BUNDLE"] = str(ensure_bundle(engine.removeprefix("npcrl-")))
        elif engine.startswith("genai-"):
            genai_model_dir(engine.split("-")[1])
        elif engine.startswith("llama.cpp-"):
            env["NPCRL_BENCH_GGUF"] = str(llama_cpp_engine.gguf_path(engine.split("-", 1)[1]))
        envs[engine] = env
    return envs


def bytes_per_step(envs: dict[str, dict[str, str]], prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """Bytes one decode step must read: the weights (one embedding row) and the KV cache at the
    mean context length; the HF model reads the same matrices as the fp32 graph."""
    kv_per_token = 2 * 30 * 3 * 64 * 4  # SmolLM2: layers x (K, V) x KV heads x head dim x fp32
    kv_bytes = (prompt_tokens + new_tokens / 2) * kv_per_token
    step_bytes: dict[str, float] = {}
    for engine, env in envs.items():
        if engine.startswith("llama.cpp-"):
            # llama.cpp keeps its KV cache in float16 by default: half the bytes per position.
            step_bytes[engine] = llama_cpp_engine.gguf_weight_bytes(Path(env["NPCRL_BENCH_GGUF"])) + kv_bytes / 2
            continue
        if engine == "hf" or engine.startswith("npcrl-"):
            graph = Path(env.get("NPCRL_BENCH_BUNDLE") or str(default_bundle_dir("fp32"))) / "model.onnx"
        else:
            graph = genai_model_dir(engine.split("-")[1]) / "model.onnx"
        step_bytes[engine] = graph_weight_bytes(graph)["weights"] + kv_bytes
    return step_bytes


def run_child(engine: str, args: argparse.Namespace, env: dict[str, str], work: Path, ref_logp: np.ndarray) -> dict:
    """One engine's runs in its own process, with its quality against the torch fp32 reference."""
    out = work / f"{engine}.json"
    cmd = [sys.executable, __file__, "--child", engine, "--tokens", str(args.tokens),
           "--repeats", str(args.repeats), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(out.read_text())
    if out.with_suffix(".npy").is_file():
        logp = log_softmax(np.load(out.with_suffix(".npy")))
        result["kl_vs_fp32"] = float((np.exp(ref_logp) * (ref_logp - logp)).sum(-1).mean())
        result["top1_vs_fp32"] = float((ref_logp.argmax(-1) == logp.argmax(-1)).mean())
        out.with_suffix(".npy").unlink()
    elif engine == "hf":
        result["kl_vs_fp32"], result["top1_vs_fp32"] = 0.0, 1.0
    return result


def median_results(per_round: dict[str, list[dict]], step_bytes: dict[str, float]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for engine, rounds in per_round.items():
        speeds = [r["decode_tok_s"] for r in rounds]
        results[engine] = {
            **rounds[0],
            "ttft_s": float(np.median([r["ttft_s"] for r in rounds])),
            "decode_tok_s": float(np.median(speeds)),
            "decode_tok_s_range": [min(speeds), max(speeds)],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
            "mb_per_token": step_bytes[engine] / 1e6,
        }
    return results


def _ratio(value: float, base: float | None) -> float:
    return value / base if base else float("nan")


def print_results(results: dict[str, dict], bandwidth: list[float], prompt_tokens: int) -> None:
    decode = {engine: r["decode_tok_s"] for engine, r in results.items()}
    peak_bw = max(bandwidth)
    print(
        f"memory read bandwidth (numpy sums over 256 MB on every core, best of 5) {bandwidth[0]:.1f} GB/s before, "
        f"{bandwidth[1]:.1f} GB/s after; MB/token = weights read per decode step + KV at the mean context; "
        f"limit = {peak_bw:.1f} GB/s / MB/token"
    )
    header = (
        f"{'engine':17s} {'TTFT ms':>7s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'(min-max)':>9s} "
        f"{'x HF':>5s} {'x l.cpp q8_0':>12s} {'x l.cpp q4_0':>12s} {'MB/token':>8s} {'limit tok/s':>11s} "
        f"{'% limit':>7s} {'peak RSS MB':>11s} {'KL vs fp32':>10s} {'top-1':>6s}"
    )
    print_table(
        header,
        (
            f"{engine:17s} {r['ttft_s'] * 1000:7.0f} {prompt_tokens / r['ttft_s']:13.0f} {r['decode_tok_s']:12.1f} "
            f"{r['decode_tok_s_range'][0]:4.0f}-{r['decode_tok_s_range'][1]:<4.0f} "
            f"{_ratio(r['decode_tok_s'], decode.get('hf')):5.2f} "
            f"{_ratio(r['decode_tok_s'], decode.get('llama.cpp-q8_0')):12.2f} "
            f"{_ratio(r['decode_tok_s'], decode.get('llama.cpp-q4_0')):12.2f} "
            f"{r['mb_per_token']:8.1f} {peak_bw * 1e3 / r['mb_per_token']:11.0f} "
            f"{r['mb_per_token'] * r['decode_tok_s'] / 1e3 / peak_bw * 100:6.0f}% {r['peak_rss_mb']:11.0f} "
            f"{r['kl_vs_fp32']:10.4f} {r['top1_vs_fp32']:6.3f}"
            for engine, r in results.items()
        ),
    )
    print_targets(results, prompt_tokens)


def print_targets(results: dict[str, dict], prompt_tokens: int) -> None:
    """The comparisons the runtime is held to, as ratios from this run."""
    llama_q8, llama_q4 = results.get("llama.cpp-q8_0"), results.get("llama.cpp-q4_0")
    hf, ours = results.get("hf"), results.get("npcrl-q8")
    if ours and hf:
        print(f"npcrl-q8 decode vs HF generate: {ours['decode_tok_s'] / hf['decode_tok_s']:.2f}x")
    if ours and llama_q8:
        print(
            f"default point (npcrl-q8, KL {ours['kl_vs_fp32']:.4f}) vs llama.cpp Q8_0 (KL {llama_q8['kl_vs_fp32']:.4f}): "
            f"decode {ours['decode_tok_s'] / llama_q8['decode_tok_s']:.2f}x, "
            f"prefill {llama_q8['ttft_s'] / ours['ttft_s']:.2f}x ({prompt_tokens} tokens)"
        )
    fast = [e for e, r in results.items() if e.startswith("npcrl-") and r["kl_vs_fp32"] <= 0.1]
    if fast and llama_q4:
        best = max(fast, key=lambda e: results[e]["decode_tok_s"])
        print(
            f"fastest npcrl row with KL <= 0.1 ({best}, KL {results[best]['kl_vs_fp32']:.4f}) vs llama.cpp Q4_0 "
            f"(KL {llama_q4['kl_vs_fp32']:.4f}): decode {results[best]['decode_tok_s'] / llama_q4['decode_tok_s']:.2f}x"
        )


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args.child, args.tokens, args.repeats, args.out)
        return

    from exporters.fetch import fetch_default_model

    fetch_default_model()
    work = user_cache_dir() / "bench" / "run"
    work.mkdir(parents=True, exist_ok=True)
    prompt = _prompt_ids()
    ref_logp = log_softmax(reference_logits(prompt, work))
    engines = chosen_engines(args)
    envs = engine_envs(engines, work)
    step_bytes = bytes_per_step(envs, len(prompt), args.tokens)
    bandwidth = [memory_bandwidth_gbs()]
    # Rounds interleave the engines, so slow phases of a shared machine hit all of them alike;
    # each figure is the median over rounds (and the runs inside each round).
    per_round: dict[str, list[dict]] = {engine: [] for engine in engines}
    for round_index in range(args.rounds):
        for engine in engines:
            result = run_child(engine, args, envs[engine], work, ref_logp)
            per_round[engine].append(result)
            print(
                f"  round {round_index + 1}: {engine} {result['decode_tok_s']:.1f} tok/s", file=sys.stderr, flush=True
            )
    bandwidth.append(memory_bandwidth_gbs())
    results = median_results(per_round, step_bytes)
    print(
        f"\nprompt {len(prompt)} tokens, {args.tokens} new tokens; median over {args.rounds} interleaved rounds "
        f"of {args.repeats} runs each; cpu threads {os.cpu_count()}"
    )
    print_results(results, bandwidth, len(prompt))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"prompt_tokens": len(prompt), "tokens": args.tokens, "bandwidth_gbs": bandwidth, "results": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
