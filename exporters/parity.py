"""Export-time checks, stored in the manifest so every bundle carries its own evidence.

* ``check_parity``: the fp32 graph against torch: logits and present KV for a prefill and for a
  cached step, and greedy decoding with and without the cache.
* ``measure_quality``: a quantised graph against the fp32 graph on a fixed prompt set: mean and
  p95 KL(fp32 || quantised) per position, top-1 agreement, and perplexity on a held-out passage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from npcrl.errors import NpcrlError
from npcrl.runtime.bundle import KVLayout
from npcrl.runtime.session import LOGITS_TO_KEEP, takes_logits_to_keep

LOGIT_ATOL = 2e-3
"""max |logit difference| accepted between torch and the fp32 graph (measured ≈ 6e-5 on SmolLM2)"""
KV_ATOL = 2e-3
"""max |key/value difference| accepted between torch and the fp32 graph"""
GREEDY_STEPS = 12
NEAR_TIE = 1e-3
"""a greedy divergence is accepted only where the top-2 logits of the reference are this close"""

PARITY_TEXT = "The blacksmith wiped the soot from his hands and looked up at the stranger."
QUALITY_PROMPTS = (
    "Greet a traveller who has just walked into your tavern.",
    "What do you know about the old mill by the river?",
    "Can you repair my sword before nightfall?",
    "Tell me about the guard captain.",
    "Why are the village gates closed at night?",
    "I found a strange amulet in the woods. What should I do?",
)
QUALITY_CONTINUATION = 24
HELDOUT_PASSAGE = (
    "The village of Oakrest sits where the river bends twice before reaching the sea. Its people "
    "are farmers and fishers for the most part, though a blacksmith, an innkeeper and a small "
    "garrison of guards keep the place running. Travellers arrive most often in late summer, when "
    "the harvest fair fills the square with music, bread and the smell of roasting apples."
)
QUALITY_BOUNDS = {8: 0.01, 4: 0.5}
"""mean KL(fp32 || quantised) per position a bundle of that many bits is expected to stay within"""


class ParityError(NpcrlError):
    """The exported graph does not reproduce the source model."""


class OrtGraph:
    """Minimal numpy driver of an exported graph, independent of npcrl.runtime.model on purpose."""

    def __init__(self, path: Path, layout: KVLayout) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.layout = layout
        self.keeps_logits = takes_logits_to_keep(self.session)

    def empty_past(self) -> list[np.ndarray]:
        shape = (1, self.layout.num_kv_heads, 0, self.layout.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in self.layout.past_names()]

    def run(self, ids: Sequence[int], past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        past = past if past is not None else self.empty_past()
        past_len = past[0].shape[2]
        total = past_len + len(ids)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray(ids, dtype=np.int64)[None, :],
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        if self.layout.position_ids:
            feeds["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        if self.keeps_logits:
            feeds[LOGITS_TO_KEEP] = np.asarray([len(ids)], dtype=np.int64)  # every position's logits
        feeds.update(zip(self.layout.past_names(), past, strict=True))
        outputs = self.session.run(["logits", *self.layout.present_names()], feeds)
        return outputs[0][0], list(outputs[1:])


def _greedy_cached(graph: OrtGraph, prompt: list[int], steps: int) -> list[int]:
    logits, past = graph.run(prompt)
    tokens = [int(np.argmax(logits[-1]))]
    for _ in range(steps - 1):
        logits, past = graph.run([tokens[-1]], past)
        tokens.append(int(np.argmax(logits[-1])))
    return tokens


def _greedy_uncached(score_all: Any, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Recompute the whole sequence every step; returns tokens and the last-position logits used."""
    tokens: list[int] = []
    used: list[np.ndarray] = []
    for _ in range(steps):
        last = score_all(prompt + tokens)[-1]
        used.append(last)
        tokens.append(int(np.argmax(last)))
    return tokens, used


def _same_up_to_ties(tokens: list[int], reference: list[int], reference_logits: list[np.ndarray]) -> bool:
    for i, (a, b) in enumerate(zip(tokens, reference, strict=True)):
        if a != b:
            top2 = np.sort(reference_logits[i])[-2:]
            return bool(top2[1] - top2[0] < NEAR_TIE)
    return True


def _max_diff(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))


def _cache_diffs(model: Any, graph: OrtGraph, prompt_ids: list[int]) -> dict[str, float]:
    """Largest logit and KV differences to torch for the prefill and one cached decode step."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        ref_logits = out.logits[0].numpy()
        ref_present = [t.numpy() for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        next_id = int(np.argmax(ref_logits[-1]))
        step = model(input_ids=torch.tensor([[next_id]]), past_key_values=out.past_key_values, use_cache=True)
        ref_step_logits = step.logits[0].numpy()
        ref_step_present = [t.numpy() for layer in step.past_key_values.layers for t in (layer.keys, layer.values)]

    logits, present = graph.run(prompt_ids)
    step_logits, step_present = graph.run([next_id], present)
    return {
        "prefill_max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
        "prefill_max_abs_kv_diff": _max_diff(present, ref_present),
        "step_max_abs_logit_diff": float(np.abs(step_logits - ref_step_logits).max()),
        "step_max_abs_kv_diff": _max_diff(step_present, ref_step_present),
    }


def _greedy_runs(model: Any, graph: OrtGraph, prompt_ids: list[int]) -> tuple[dict[str, Any], list[str]]:
    """Greedy decoding with and without the KV cache and in torch: the report's entries, and failures."""
    import torch

    def torch_scores(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()

    cached = _greedy_cached(graph, prompt_ids, GREEDY_STEPS)
    uncached, uncached_logits = _greedy_uncached(lambda ids: graph.run(ids)[0], prompt_ids, GREEDY_STEPS)
    reference, reference_logits = _greedy_uncached(torch_scores, prompt_ids, GREEDY_STEPS)
    entries = {
        "greedy_steps": GREEDY_STEPS,
        "greedy_cached_equals_uncached": cached == uncached,
        "greedy_onnx_equals_torch": cached == reference,
        "greedy_tokens": cached,
    }
    failures = []
    if not _same_up_to_ties(cached, uncached, uncached_logits):
        failures.append(f"greedy tokens differ with and without the KV cache: {cached} vs {uncached}")
    if not _same_up_to_ties(cached, reference, reference_logits):
        failures.append(f"greedy tokens differ between ONNX and torch: {cached} vs {reference}")
    return entries, failures


def check_parity(model: Any, graph_path: Path, layout: KVLayout, prompt_ids: list[int]) -> dict[str, Any]:
    """Compare the fp32 graph with torch; raise ``ParityError`` outside the stated tolerances."""
    graph = OrtGraph(graph_path, layout)
    report: dict[str, Any] = {"prompt_tokens": len(prompt_ids), "logit_atol": LOGIT_ATOL, "kv_atol": KV_ATOL}
    report.update(_cache_diffs(model, graph, prompt_ids))
    greedy, greedy_failures = _greedy_runs(model, graph, prompt_ids)
    report.update(greedy)
    failures = [
        f"{key} = {report[key]:.3g} > {tol}"
        for key, tol in (
            ("prefill_max_abs_logit_diff", LOGIT_ATOL),
            ("step_max_abs_logit_diff", LOGIT_ATOL),
            ("prefill_max_abs_kv_diff", KV_ATOL),
            ("step_max_abs_kv_diff", KV_ATOL),
        )
        if report[key] > tol
    ]
    failures += greedy_failures
    report["passed"] = not failures
    if failures:
        raise ParityError(f"{graph_path}: parity check failed: " + "; ".join(failures))
    return report


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (KL and perplexity of near-equal distributions need it)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _perplexity(graph: OrtGraph, ids: list[int]) -> float:
    logp = log_softmax(graph.run(ids)[0][:-1])
    targets = np.asarray(ids[1:])
    return float(np.exp(-logp[np.arange(len(targets)), targets].mean()))


def cache_consistency(graph: OrtGraph, prompt_tokens: int, sequence: list[int]) -> dict[str, float]:
    """How far ``graph``'s step-by-step logits (the prompt, then one token at a time through the KV
    cache) are from its one-shot logits of the same ``sequence``: the largest logit difference, the
    logit range, and the mean KL(one-shot || step-by-step) per position."""
    one_shot = graph.run(sequence)[0][prompt_tokens - 1 : -1]
    logits, past = graph.run(sequence[:prompt_tokens])
    rows = [logits[-1]]
    for token in sequence[prompt_tokens:-1]:
        logits, past = graph.run([token], past)
        rows.append(logits[-1])
    stepwise = np.stack(rows)
    one_shot_logp, stepwise_logp = log_softmax(one_shot), log_softmax(stepwise)
    kl = (np.exp(one_shot_logp) * (one_shot_logp - stepwise_logp)).sum(axis=-1)
    return {
        "cache_max_abs_logit_diff": float(np.abs(stepwise - one_shot).max()),
        "cache_logit_scale": float(np.abs(one_shot).max()),
        "cache_kl_mean": float(kl.mean()),
    }


def check_cache_consistency(cache: dict[str, float], bits: int, where: Path) -> None:
    """A quantised graph's cache must be sound: its step-by-step distributions may differ from its
    one-shot ones by no more than quantisation may cost (``QUALITY_BOUNDS``). Not the largest logit
    difference: 8- and 4-bit MatMul kernels differ between one row and many (int8 activations
    quantised per block), and one logit among millions moved 1.6 of a range of 32 in a sound
    8-bit graph, while a broken cache changes whole distributions."""
    bound = QUALITY_BOUNDS.get(bits, QUALITY_BOUNDS[8])
    if not cache["cache_kl_mean"] <= bound:  # NaN fails too
        raise ParityError(
            f"{where}: cached and one-shot next-token distributions differ by KL {cache['cache_kl_mean']:.3g} "
            f"nats per position on average (> {bound} allowed for {bits}-bit weights; largest logit "
            f"difference {cache['cache_max_abs_logit_diff']:.3g} of a range of {cache['cache_logit_scale']:.3g}): "
            "the KV cache path does not reproduce the graph"
        )


def measure_quality(
    fp32_path: Path, quant_path: Path, layout: KVLayout, prompts: list[list[int]], heldout_ids: list[int], bits: int
) -> dict[str, Any]:
    """KL and top-1 agreement of a quantised graph against fp32, teacher-forced on the fp32
    graph's own greedy continuations of fixed prompts."""
    reference = OrtGraph(fp32_path, layout)
    candidate = OrtGraph(quant_path, layout)
    kls: list[np.ndarray] = []
    agree: list[np.ndarray] = []
    sequences = [prompt + _greedy_cached(reference, prompt, QUALITY_CONTINUATION) for prompt in prompts]
    for sequence in sequences:
        ref_logp = log_softmax(reference.run(sequence)[0])
        cand_logp = log_softmax(candidate.run(sequence)[0])
        kls.append((np.exp(ref_logp) * (ref_logp - cand_logp)).sum(axis=-1))
        agree.append(ref_logp.argmax(-1) == cand_logp.argmax(-1))
    kl = np.concatenate(kls)
    cache = cache_consistency(candidate, len(prompts[0]), sequences[0])
    check_cache_consistency(cache, bits, quant_path)
    cached = _greedy_cached(candidate, prompts[0], GREEDY_STEPS)
    uncached, _ = _greedy_uncached(lambda ids: candidate.run(ids)[0], prompts[0], GREEDY_STEPS)
    bound = QUALITY_BOUNDS.get(bits)
    report = {
        "reference": "fp32 graph",
        "prompts": len(prompts),
        "positions": int(kl.size),
        "kl_mean": float(kl.mean()),
        "kl_p95": float(np.percentile(kl, 95)),
        "top1_agreement": float(np.concatenate(agree).mean()),
        "perplexity_fp32": _perplexity(reference, heldout_ids),
        "perplexity_quantized": _perplexity(candidate, heldout_ids),
        "kl_bound": bound,
        **cache,
        "greedy_cached_equals_uncached": cached == uncached,
    }
    report["within_bound"] = bound is None or float(kl.mean()) <= bound
    return report
