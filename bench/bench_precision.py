"""The trainer's pass in float32 against bfloat16 on this CPU, side by side in one process.

Times what an update step does for every micro-batch: a forward and backward of the LoRA policy
with its value head (``PolicyWithValue``, real SmolLM2-135M weights from the user cache), over one
row of ``--tokens`` tokens whose last ``--response`` are the response, once under each
``model.precision``. Then one matrix product of the model's MLP shape (tokens x 576 by 576 x 1536)
in each format, which shows the CPU's own rate apart from the model. Prints the seconds, the ratio
to fp32, what torch calls the CPU's vector unit, whether it has bfloat16 units, and what
``model.precision = "auto"`` resolves to here.

bfloat16 pays only on a CPU that multiplies it in hardware (AVX512-BF16, AMX); elsewhere torch
emulates it, so keep ``--tokens`` small on such a machine: its bf16 rows can take minutes.

Usage: python bench/bench_precision.py [--model DIR] [--tokens 128] [--response 32] [--repeats 2]
                                       [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import print_table  # noqa: E402
from npcrl.paths import default_model_dir  # noqa: E402
from npcrl.train.config import ModelConfig  # noqa: E402
from npcrl.train.cpu_precision import cpu_name, native_bf16, resolve_precision  # noqa: E402
from npcrl.train.policy import PolicyWithValue, build_policy  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def pass_inputs(tokens: int, response: int, vocab: int) -> tuple[torch.Tensor, ...]:
    """One row as a micro-batch holds it: ids, mask, the response's positions, ids and temperature."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, tokens), generator=generator)
    positions = torch.arange(tokens - response - 1, tokens - 1)[None, :]
    return ids, torch.ones_like(ids), positions, ids[:, -response:], torch.ones(1)


def time_pass(module: PolicyWithValue, inputs: tuple[torch.Tensor, ...], repeats: int) -> float:
    """Mean seconds of a forward and backward through ``module`` (its gradients cleared after each)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        logprobs, values, _ = module(*inputs, entropy_grad=False)
        (logprobs.sum() + values.sum()).backward()
        seconds.append(time.perf_counter() - started)
        module.zero_grad(set_to_none=True)
    return sum(seconds) / len(seconds)


def time_matmul(tokens: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(tokens, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - started) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_dir(), help="HF safetensors weights")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = build_policy(args.model, ModelConfig(precision="fp32"), seed=0)
    vocab = policy.module.lm.get_output_embeddings().weight.shape[0]
    inputs = pass_inputs(args.tokens, args.response, vocab)
    warm = pass_inputs(16, 4, vocab)
    passes: dict[str, float] = {}
    products: dict[str, float] = {}
    for precision, dtype in zip(PRECISIONS, (torch.float32, torch.bfloat16), strict=True):
        policy.module.precision = precision
        time_pass(policy.module, warm, 1)
        passes[precision] = time_pass(policy.module, inputs, args.repeats)
        products[precision] = time_matmul(args.tokens, dtype, max(3, args.repeats))
    header = f"{'precision':>9} {'forward+backward s':>18} {'vs fp32':>8} {'MLP product ms':>14} {'vs fp32':>8}"
    print_table(
        header,
        (
            f"{p:>9} {passes[p]:18.2f} {passes[p] / passes['fp32']:8.2f} {products[p] * 1e3:14.2f}"
            f" {products[p] / products['fp32']:8.2f}"
            for p in PRECISIONS
        ),
    )
    print(
        f"{args.tokens} tokens ({args.response} response), {args.threads} threads; CPU {cpu_name()}, bfloat16 units:"
        f" {'yes' if native_bf16() else 'no'}; model.precision = 'auto' runs {resolve_precision('auto')} here"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
