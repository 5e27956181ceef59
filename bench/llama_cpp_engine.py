"""llama.cpp as a comparison engine for the generation benchmark, through llama-cpp-python.

The GGUF files are made from the same fp32 safetensors the npcrl bundles are exported from, with
llama.cpp's own tools: its converter (``convert_hf_to_gguf.py``, taken from the source package of
the installed llama-cpp-python, so converter and runtime match) writes an F32 GGUF, and its
quantiser (``llama_model_quantize``, the library call behind ``llama-quantize``) makes Q8_0, Q4_0
and Q4_K_M from it. Requantising the Q4_1 file the default model ships in would hand llama.cpp a
worse model than npcrl gets.

Install (optional, bench only; builds llama.cpp from source for this CPU, several minutes):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python ".[bench]"
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from npcrl.paths import default_model_dir, user_cache_dir

QUANTS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
"""llama.cpp quantisation types benchmarked, by the suffix of their engine name (``llama.cpp-q8_0``)"""

CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def available() -> str | None:
    """None when llama-cpp-python can be imported, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"llama-cpp-python is not installed ({exc})"
    return None


def _work_dir() -> Path:
    return user_cache_dir() / "bench" / "llama.cpp"


def converter_dir() -> Path:
    """llama.cpp's converter from the source package of the installed llama-cpp-python (fetched once)."""
    import llama_cpp

    version = llama_cpp.__version__
    target = _work_dir() / f"src-{version}"
    if all((target / part).exists() for part in CONVERTER_PARTS):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", tmp, "-q"]  # fmt: skip
        subprocess.run(cmd, check=True)
        (archive,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            wanted = [m for m in members if m.name[len(prefix) :].split("/")[0] in CONVERTER_PARTS]
            for member in wanted:
                member.name = member.name[len(prefix) :]
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=wanted, filter="data")
    return target


def gguf_path(quant: str) -> Path:
    """The GGUF of the default model at ``quant`` ("f32" or a key of QUANTS), made once."""
    path = _work_dir() / f"SmolLM2-135M-Instruct-{quant}.gguf"
    if path.is_file():
        return path
    if quant == "f32":
        source = converter_dir()
        env = dict(os.environ, PYTHONPATH=str(source / "gguf-py"))
        cmd = [sys.executable, str(source / "convert_hf_to_gguf.py"), str(default_model_dir()),
               "--outtype", "f32", "--outfile", str(path)]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return path
    import llama_cpp

    f32 = gguf_path("f32")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = os.cpu_count() or 1
    partial = path.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(f32).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {f32} to {quant}")
    partial.replace(path)
    return path


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of weights one decode step reads: every tensor once; with tied embeddings the token
    table is the output matrix too, so it is read whole (else only one row of it)."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    if "output.weight" in tensors:
        table = tensors["token_embd.weight"]
        total -= int(table.n_bytes) - int(table.n_bytes) // max(int(n) for n in table.shape)
    return total


def run(
    path: Path, prompt: list[int], reference: list[int], tokens: int, repeats: int, threads: int, sampling: dict
) -> dict:
    """Decode speed with llama.cpp's own sampler chain at the benchmark's settings, and the
    teacher-forced logits of ``reference`` (for KL and top-1 against torch fp32)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, seed=sampling["seed"],
        verbose=False,
    )  # fmt: skip

    def one_run() -> tuple[float, float]:
        llm.reset()  # no reuse of the previous run's prompt: every run prefills it whole
        made = 0
        first = 0.0
        start = time.perf_counter()
        # top_k 0 and min_p 0 switch those filters off, as in npcrl's sampler; EOS does not stop it.
        for _ in llm.generate(
            prompt, temp=sampling["temperature"], top_p=sampling["top_p"], top_k=0, min_p=0.0,
            repeat_penalty=sampling["repetition_penalty"], reset=True,
        ):  # fmt: skip
            made += 1
            if made == 1:
                first = time.perf_counter()
            if made == tokens:
                break
        return first - start, (tokens - 1) / (time.perf_counter() - first)

    one_run()  # warm-up
    runs = [one_run() for _ in range(repeats)]
    llm.close()  # frees the model before the scorer loads its own copy
    scorer = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=threads, logits_all=True, verbose=False)
    scorer.eval(reference)
    logits = np.array(scorer.scores[: len(reference)], dtype=np.float32)
    return {
        "ttft_s": float(np.median([r[0] for r in runs])),
        "decode_tok_s": float(np.median([r[1] for r in runs])),
        "logits": logits,
    }


_LOG_SINK: list = []


def _silent_log() -> object:
    """A llama.cpp log callback that drops every message (kept alive for the process)."""
    import llama_cpp as lc

    if not _LOG_SINK:
        _LOG_SINK.append(lc.llama_log_callback(lambda level, text, data: None))
    return _LOG_SINK[0]


def run_parallel(path: Path, prompts: list[list[int]], tokens: int, threads: int, sampling: dict) -> dict:
    """llama.cpp's own way to serve several sequences: one context with a sequence id per
    conversation, every prompt prefilled in one batch, then one batch per step holding each
    sequence's next token (as its ``parallel`` and ``batched`` examples do). Each sequence samples
    with its own chain at the benchmark's settings (repetition penalty over the last 64 tokens,
    llama.cpp's default window). Returns the wall time and tokens made."""
    import llama_cpp as lc

    lc.llama_log_set(_silent_log(), ctypes.c_void_p(0))  # the low-level calls take no verbose flag
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    total_prompt = sum(len(p) for p in prompts)
    params.n_ctx = len(prompts) * (max(len(p) for p in prompts) + tokens + 16)
    params.n_batch = max(512, total_prompt)
    params.n_seq_max = len(prompts)
    params.n_threads = params.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, params)
    vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(max(total_prompt, len(prompts)), 0, len(prompts))
    chains = []
    for seq, prompt in enumerate(prompts):
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        penalties = lc.llama_sampler_init_penalties(vocab_size, 64, sampling["repetition_penalty"], 0.0, 0.0)
        lc.llama_sampler_chain_add(chain, penalties)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling["top_p"], 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling["temperature"]))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(sampling["seed"] + seq))
        for token in prompt:
            lc.llama_sampler_accept(chain, token)
        chains.append(chain)

    def fill(entries: list[tuple[int, int, int, bool]]) -> None:
        for k, (token, pos, seq, logits) in enumerate(entries):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
            batch.seq_id[k][0], batch.logits[k] = seq, logits
        batch.n_tokens = len(entries)

    try:
        start = time.perf_counter()
        entries = [(t, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, t in enumerate(p)]
        fill(entries)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on the prompts")
        rows = [i for i, entry in enumerate(entries) if entry[3]]  # batch index of each sequence's logits
        first = time.perf_counter()
        for step in range(tokens):
            made = [lc.llama_sampler_sample(chains[seq], ctx, rows[seq]) for seq in range(len(prompts))]
            if step == tokens - 1:
                break
            fill([(token, len(prompts[seq]) + step, seq, True) for seq, token in enumerate(made)])
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on a decode step")
            rows = list(range(len(prompts)))
        end = time.perf_counter()
    finally:
        for chain in chains:
            lc.llama_sampler_free(chain)
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return {"wall_s": end - start, "prefill_s": first - start, "tokens": tokens * len(prompts)}
