"""HF model → verified npcrl bundle: export, parity check, quantise, measure, write manifest.

The bundle is assembled in a staging directory next to ``out`` and moved into place only when
every check passed, so a failed export never leaves a half-written bundle where a game looks.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporters.fused_export import (
    FUSED_FAMILIES,
    export_fused,
    fused_export_available,
    fused_kv_layout,
    fused_unsupported_reason,
)
from exporters.onnx_export import export_onnx, kv_layout_of
from exporters.parity import HELDOUT_PASSAGE, PARITY_TEXT, QUALITY_PROMPTS, check_parity, measure_quality
from exporters.quantize import QUANT_SPECS, quantize_onnx
from exporters.source import LoadedModel, load_model, save_as_hf_dir
from npcrl.errors import NpcrlError
from npcrl.runtime.bundle import Bundle, Manifest, SpecialTokens, describe_files, load_bundle, write_manifest
from npcrl.runtime.onnx_refs import external_data_references

EXPORTER_VERSION = 2
ONNX_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"


class ExportError(NpcrlError):
    """The export could not produce a bundle."""


def _log(message: str) -> None:
    print(f"[npcrl export] {message}", file=sys.stderr, flush=True)


def special_tokens_of(loaded: LoadedModel, tokenizer_json: Path) -> SpecialTokens:
    """EOS ids from generation config, model config and tokenizer; every special token of the vocab."""
    model, tok = loaded.model, loaded.tokenizer
    eos: list[int] = []
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        for token_id in value if isinstance(value, list) else [value]:
            if isinstance(token_id, int) and token_id not in eos:
                eos.append(token_id)
    if tok.eos_token_id is not None and tok.eos_token_id not in eos:
        eos.append(int(tok.eos_token_id))
    if not eos:
        raise ExportError(f"{loaded.source}: the model defines no EOS token; generation could never stop")
    added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
    specials = {int(t["id"]): str(t["content"]) for t in added if t.get("special")}
    for token_id, text in zip(tok.all_special_ids, tok.all_special_tokens, strict=False):
        specials.setdefault(int(token_id), str(text))
    return SpecialTokens(
        eos_token_ids=tuple(eos),
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        special_token_ids=tuple(sorted(specials)),
        special_token_strings=tuple(specials[i] for i in sorted(specials)),
    )


def _chat_prompt(tok: Any, text: str) -> list[int]:
    if getattr(tok, "chat_template", None):
        messages = [
            {"role": "system", "content": "You are Brom, the village blacksmith. Answer in one or two sentences."},
            {"role": "user", "content": text},
        ]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tok(rendered, add_special_tokens=False)["input_ids"])
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _save_tokenizer(tok: Any, staging: Path) -> Path:
    tmp = staging / "_tokenizer"
    tok.save_pretrained(str(tmp))
    if not (tmp / "tokenizer.json").is_file():
        raise ExportError("the tokenizer has no fast (tokenizers) backend; npcrl needs tokenizer.json")
    shutil.move(str(tmp / "tokenizer.json"), staging / TOKENIZER_NAME)
    shutil.rmtree(tmp)
    return staging / TOKENIZER_NAME


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _materialise_hf_dir(loaded: LoadedModel, staging: Path) -> Path:
    """The builder reads a safetensors HF directory; GGUF and hub sources are saved to one first."""
    source = Path(loaded.source).expanduser()
    if source.is_dir():
        return source
    target = staging / "_hf"
    save_as_hf_dir(loaded.model, loaded.tokenizer, target)
    return target


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


def _set_aside_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def restore_cut_off_swap(out: str | Path) -> bool:
    """Put a bundle set aside by a replacement that was cut off back in place; True if it was.

    Replacing a bundle renames the old one aside, then the new one into place: a process killed
    between the two renames leaves no bundle at ``out``, only the old one beside it."""
    out = Path(out).expanduser()
    old = _set_aside_name(out)
    if out.exists() or not old.is_dir():
        return False
    old.rename(out)
    _log(f"restored {out} from a replacement that was cut off")
    return True


def export_bundle(
    source: str | Path,
    out: str | Path,
    quant: str = "q8",
    parent: str | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    graph: str = "auto",
) -> Bundle:
    """Export ``source`` (HF dir, GGUF file or hub id) to a bundle directory ``out``.

    ``graph``: 'fused' (Llama family, fastest), 'torch' (any supported family, traced), or 'auto'.
    """
    if quant not in QUANT_SPECS:
        raise ExportError(f"quantisation {quant!r} is not one of {', '.join(QUANT_SPECS)}")
    spec = QUANT_SPECS[quant]
    out = Path(out).expanduser()
    restore_cut_off_swap(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists (pass overwrite=True / --force to replace it)")
    started = time.perf_counter()
    _log(f"loading {source}")
    loaded = load_model(source)
    model, tok = loaded.model, loaded.tokenizer
    layout = kv_layout_of(model)
    route = choose_graph(loaded.family, graph, fused_unsupported_reason(model.config, layout))
    if route == "fused":
        layout = fused_kv_layout(layout)
    _log(
        f"{type(model).__name__}: {layout.num_layers} layers, {layout.num_kv_heads} KV heads x {layout.head_dim}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; {route} graph"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.staging-", dir=out.parent) as tmp:
        staging = Path(tmp)
        fp32_dir = staging / "_fp32"
        fp32_dir.mkdir()
        if route == "fused":
            hf_dir = _materialise_hf_dir(loaded, staging)
            fp32_path = export_fused(hf_dir, fp32_dir, None)
        else:
            fp32_path = fp32_dir / ONNX_NAME
            export_onnx(model, layout, fp32_path)

        _log("checking parity with torch (prefill, cached step, greedy with and without cache)")
        parity = check_parity(model, fp32_path, layout, _chat_prompt(tok, PARITY_TEXT))
        _log(
            f"parity ok: max |dlogit| prefill {parity['prefill_max_abs_logit_diff']:.2e}, "
            f"step {parity['step_max_abs_logit_diff']:.2e}"
        )
        quantization: dict[str, Any] = spec.to_manifest()
        if spec.bits:
            if route == "fused":
                export_fused(hf_dir, staging, spec.bits, spec.block_size)
                quantization["scope"] = "every linear layer incl. the LM head" + (
                    "; the tied embedding is 4-bit too" if spec.bits == 4 else "; embedding lookup stays fp32"
                )
            else:
                quantize_onnx(fp32_path, staging / ONNX_NAME, spec)
            _log("measuring quantised quality against fp32 and cache consistency")
            quantization["quality"] = measure_quality(
                fp32_path,
                staging / ONNX_NAME,
                layout,
                [_chat_prompt(tok, p) for p in QUALITY_PROMPTS],
                list(tok(HELDOUT_PASSAGE, add_special_tokens=False)["input_ids"]),
                spec.bits,
            )
            quality = quantization["quality"]
            _log(
                f"{quant}: mean KL {quality['kl_mean']:.4f}, top-1 agreement {quality['top1_agreement']:.3f}, "
                f"perplexity {quality['perplexity_fp32']:.2f} -> {quality['perplexity_quantized']:.2f}"
            )
            if not quality["within_bound"]:
                _log(
                    f"warning: mean KL {quality['kl_mean']:.4f} exceeds the {spec.bits}-bit bound {quality['kl_bound']}"
                )
        else:
            for item in fp32_dir.iterdir():
                shutil.move(str(item), staging / item.name)
        shutil.rmtree(fp32_dir)
        if (staging / "_hf").exists():
            shutil.rmtree(staging / "_hf")
        tokenizer_path = _save_tokenizer(tok, staging)
        # Every file the graph loads is listed, and so hashed into the bundle's identity.
        onnx_files = [ONNX_NAME, *(n for n in external_data_references(staging / ONNX_NAME) if n != ONNX_NAME)]
        config = model.config
        manifest = Manifest(
            files=describe_files(staging, [*onnx_files, TOKENIZER_NAME]),
            onnx_file=ONNX_NAME,
            tokenizer_file=TOKENIZER_NAME,
            kv_cache=layout,
            special_tokens=special_tokens_of(loaded, tokenizer_path),
            vocab_size=int(config.vocab_size),
            chat_template=getattr(tok, "chat_template", None),
            model={
                "source": loaded.source,
                "architecture": type(model).__name__,
                "model_type": config.model_type,
                "family": loaded.family,
                "graph": route,
                "num_parameters": int(sum(p.numel() for p in model.parameters())),
                "hidden_size": int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
                "max_position_embeddings": int(
                    getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0)
                ),
            },
            quantization=quantization,
            parity=parity,
            parent=parent,
            provenance={
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "exporter_version": EXPORTER_VERSION,
                "versions": _versions(),
                "export_seconds": round(time.perf_counter() - started, 1),
                **(provenance or {}),
            },
        )
        write_manifest(staging, manifest)
        bundle = load_bundle(staging)  # the same checks a game will run
        # Swap into place: the old bundle (if replaced) is removed only after the new one is there.
        old = _set_aside_name(out)
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
        staging.rename(out)
        Path(tmp).mkdir()  # TemporaryDirectory expects to clean something up
        if old.exists():
            shutil.rmtree(old)
    _log(f"bundle {bundle.bundle_id} written to {out} in {time.perf_counter() - started:.0f} s")
    return load_bundle(out, verify=False)
