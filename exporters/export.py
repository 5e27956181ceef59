"""HF model → verified npcrl bundle: export, parity check, quantise, measure, write manifest.

The bundle is assembled in a staging directory next to ``out`` and moved into place only when
every check passed (``npcrl.durable.replace_dir``), so a failed export never leaves a
half-written bundle where a game looks.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.errors import ExportError
from exporters.fused_export import (
    FUSED_FAMILIES,
    export_fused,
    fused_export_available,
    fused_kv_layout,
    fused_unsupported_reason,
)
from exporters.logits_to_keep import add_logits_to_keep
from exporters.manifest import ONNX_NAME, ManifestInputs, build_manifest, save_tokenizer
from exporters.merge_projections import merge_shared_input_matmuls
from exporters.onnx_export import export_onnx, kv_layout_of
from exporters.parity import HELDOUT_PASSAGE, PARITY_TEXT, QUALITY_PROMPTS, check_parity, measure_quality
from exporters.quantize import QUANT_SPECS, QuantSpec, quantize_onnx
from exporters.source import LoadedModel, load_model, save_as_hf_dir
from npcrl.durable import replace_dir, restore_set_aside
from npcrl.runtime.bundle import Bundle, KVLayout, load_bundle, write_manifest

__all__ = ["ExportError", "choose_graph", "export_bundle", "restore_cut_off_swap"]


def _log(message: str) -> None:
    print(f"[npcrl export] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ExportJob:
    """One export: the loaded model, the graph route and quantisation, and where files go.

    ``scratch`` holds intermediate files (the fp32 graph, a saved HF directory); ``bundle_dir``
    only what the bundle ships. Both live in a temporary directory beside ``out``."""

    loaded: LoadedModel
    layout: KVLayout
    route: str
    spec: QuantSpec
    scratch: Path
    bundle_dir: Path


def chat_prompt(tok: Any, text: str) -> list[int]:
    if getattr(tok, "chat_template", None):
        messages = [
            {"role": "system", "content": "You are Brom, the village blacksmith. Answer in one or two sentences."},
            {"role": "user", "content": text},
        ]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tok(rendered, add_special_tokens=False)["input_ids"])
    return list(tok(text, add_special_tokens=False)["input_ids"])


def choose_graph(family: str, graph: str, unsupported: str | None = None) -> str:
    """'fused' (onnxruntime-genai builder) for Llama-family models it can run, else 'torch'.

    ``unsupported`` is why the fused graph's kernels cannot run this model (``fused_unsupported_reason``):
    'auto' then takes the traced graph and says why; an explicit 'fused' is refused.
    """
    if graph not in ("auto", "fused", "torch"):
        raise ExportError(f"graph {graph!r} is not one of auto, fused, torch")
    fusable = family in FUSED_FAMILIES
    if graph == "fused":
        if not fusable:
            raise ExportError(f"the fused graph supports {', '.join(FUSED_FAMILIES)} models, not {family}")
        if unsupported is not None:
            raise ExportError(f"the fused graph cannot run this model: {unsupported}; export it with graph 'torch'")
        if not fused_export_available():
            raise ExportError("the fused graph needs onnxruntime-genai (pip install onnxruntime-genai)")
        return "fused"
    if graph == "auto" and fusable and fused_export_available():
        if unsupported is None:
            return "fused"
        _log(f"not using the fused graph: {unsupported}; taking the traced graph")
    return "torch"


def restore_cut_off_swap(out: str | Path) -> bool:
    """Put a bundle set aside by a replacement that was cut off back in place; True if it was.

    Replacing a bundle renames the old one aside, then the new one into place: a process killed
    between the two renames leaves no bundle at ``out``, only the old one beside it."""
    out = Path(out).expanduser()
    restored = restore_set_aside(out)
    if restored:
        _log(f"restored {out} from a replacement that was cut off")
    return restored


def _check_target(out: Path, overwrite: bool) -> None:
    restore_cut_off_swap(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists (pass overwrite=True / --force to replace it)")


def _load_source(source: str | Path, graph: str) -> tuple[LoadedModel, KVLayout, str]:
    """The model, its KV layout (as the chosen graph lays it out) and the graph route."""
    _log(f"loading {source}")
    loaded = load_model(source)
    model = loaded.model
    layout = kv_layout_of(model)
    route = choose_graph(loaded.family, graph, fused_unsupported_reason(model.config, layout))
    if route == "fused":
        layout = fused_kv_layout(layout)
    _log(
        f"{type(model).__name__}: {layout.num_layers} layers, {layout.num_kv_heads} KV heads x {layout.head_dim}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; {route} graph"
    )
    return loaded, layout, route


def _hf_dir(job: ExportJob) -> Path:
    """The builder reads a safetensors HF directory; GGUF and hub sources are saved to one first."""
    source = Path(job.loaded.source).expanduser()
    if source.is_dir():
        return source
    target = job.scratch / "hf"
    if not target.is_dir():
        save_as_hf_dir(job.loaded.model, job.loaded.tokenizer, target)
    return target


def _export_fp32_graph(job: ExportJob) -> Path:
    fp32_dir = job.scratch / "fp32"
    fp32_dir.mkdir()
    if job.route == "fused":
        path = export_fused(_hf_dir(job), fp32_dir, None)
        add_logits_to_keep(path)
        return path
    fp32_path = fp32_dir / ONNX_NAME
    export_onnx(job.loaded.model, job.layout, fp32_path)
    return fp32_path


def _check_parity(job: ExportJob, fp32_path: Path) -> dict[str, Any]:
    _log("checking parity with torch (prefill, cached step, greedy with and without cache)")
    parity = check_parity(job.loaded.model, fp32_path, job.layout, chat_prompt(job.loaded.tokenizer, PARITY_TEXT))
    _log(
        f"parity ok: max |dlogit| prefill {parity['prefill_max_abs_logit_diff']:.2e}, "
        f"step {parity['step_max_abs_logit_diff']:.2e}"
    )
    return parity


def _quantise(job: ExportJob, fp32_path: Path) -> dict[str, Any]:
    """Write the bundle's graph (quantised, or the fp32 one as it is); the manifest's quantization."""
    spec, bundle_dir = job.spec, job.bundle_dir
    quantization: dict[str, Any] = spec.to_manifest()
    bits = spec.bits
    if not bits:
        for item in fp32_path.parent.iterdir():
            shutil.move(str(item), bundle_dir / item.name)
        return quantization
    if job.route == "fused":
        export_fused(_hf_dir(job), bundle_dir, bits, spec.block_size)
        merged = merge_shared_input_matmuls(bundle_dir / ONNX_NAME)
        _log(f"merged {merged} quantised projections into others that read the same input (MLP gate and up)")
        quantization["merged_projections"] = merged
        add_logits_to_keep(bundle_dir / ONNX_NAME)
        quantization["scope"] = "every linear layer incl. the LM head" + (
            "; the tied embedding is 4-bit too" if bits == 4 else "; embedding lookup stays fp32"
        )
    else:
        quantize_onnx(fp32_path, bundle_dir / ONNX_NAME, spec)
    quantization["quality"] = _measure_quality(job, fp32_path, bits)
    return quantization


def _measure_quality(job: ExportJob, fp32_path: Path, bits: int) -> dict[str, Any]:
    _log("measuring quantised quality against fp32 and cache consistency")
    tok, name = job.loaded.tokenizer, job.spec.name
    quality = measure_quality(
        fp32_path,
        job.bundle_dir / ONNX_NAME,
        job.layout,
        [chat_prompt(tok, p) for p in QUALITY_PROMPTS],
        list(tok(HELDOUT_PASSAGE, add_special_tokens=False)["input_ids"]),
        bits,
    )
    _log(
        f"{name}: mean KL {quality['kl_mean']:.4f}, top-1 agreement {quality['top1_agreement']:.3f}, "
        f"perplexity {quality['perplexity_fp32']:.2f} -> {quality['perplexity_quantized']:.2f}"
    )
    if not quality["within_bound"]:
        _log(f"warning: mean KL {quality['kl_mean']:.4f} exceeds the {bits}-bit bound {quality['kl_bound']}")
    return quality


def export_bundle(
    source: str | Path,
    out: str | Path,
    quant: str = "q8",
    parent: str | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    graph: str = "auto",
    recorded_source: str | None = None,
) -> Bundle:
    """Export ``source`` (HF dir, GGUF file or hub id) to a bundle directory ``out``.

    ``graph``: 'fused' (Llama family, fastest), 'torch' (any supported family, traced), or 'auto'.
    ``recorded_source``: the manifest's ``model.source`` instead of ``source`` (e.g. a path relative
    to ``out``, for weights that move with the bundle).
    """
    if quant not in QUANT_SPECS:
        raise ExportError(f"quantisation {quant!r} is not one of {', '.join(QUANT_SPECS)}")
    out = Path(out).expanduser()
    _check_target(out, overwrite)
    started = time.perf_counter()
    loaded, layout, route = _load_source(source, graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.staging-", dir=out.parent) as tmp:
        job = ExportJob(loaded, layout, route, QUANT_SPECS[quant], Path(tmp), Path(tmp) / "bundle")
        job.bundle_dir.mkdir()
        fp32_path = _export_fp32_graph(job)
        parity = _check_parity(job, fp32_path)
        quantization = _quantise(job, fp32_path)
        tokenizer_path = save_tokenizer(loaded.tokenizer, job.scratch, job.bundle_dir)
        inputs = ManifestInputs(
            loaded, layout, route, quantization, parity, parent, provenance, started, recorded_source
        )
        write_manifest(job.bundle_dir, build_manifest(job.bundle_dir, tokenizer_path, inputs))
        bundle = load_bundle(job.bundle_dir)  # the same checks a game will run
        # The old bundle (if replaced) is removed only after the new one is in place.
        replace_dir(job.bundle_dir, out)
    _log(f"bundle {bundle.bundle_id} written to {out} in {time.perf_counter() - started:.0f} s")
    return load_bundle(out, verify=False)
