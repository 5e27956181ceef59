"""What a bundle says about itself: the tokenizer file, special tokens, the model's description and
provenance, gathered into the ``Manifest`` that ``write_manifest`` puts beside the graph."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporters.errors import ExportError
from exporters.source import LoadedModel
from npcrl.runtime.bundle import KVLayout, Manifest, SpecialTokens, describe_files
from npcrl.runtime.onnx_refs import external_data_references

EXPORTER_VERSION = 2
ONNX_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"


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


def save_tokenizer(tok: Any, scratch: Path, bundle_dir: Path) -> Path:
    """Put the tokenizer's ``tokenizer.json`` (and nothing else it saves) into the bundle."""
    saved = scratch / "tokenizer"
    tok.save_pretrained(str(saved))
    if not (saved / "tokenizer.json").is_file():
        raise ExportError("the tokenizer has no fast (tokenizers) backend; npcrl needs tokenizer.json")
    shutil.move(str(saved / "tokenizer.json"), bundle_dir / TOKENIZER_NAME)
    return bundle_dir / TOKENIZER_NAME


def versions() -> dict[str, str]:
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


def describe_model(loaded: LoadedModel, route: str, source: str | None = None) -> dict[str, Any]:
    """The manifest's ``model`` section; ``source`` is what it records as the weights' place (the
    loaded source when None)."""
    model, config = loaded.model, loaded.model.config
    return {
        "source": loaded.source if source is None else source,
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "family": loaded.family,
        "graph": route,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "hidden_size": int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
        "max_position_embeddings": int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0)
        ),
    }


@dataclass(frozen=True)
class ManifestInputs:
    """What the export measured and was told, for the manifest."""

    loaded: LoadedModel
    layout: KVLayout
    route: str
    quantization: dict[str, Any]
    parity: dict[str, Any]
    parent: str | None
    provenance: dict[str, Any] | None
    started: float
    """``time.perf_counter()`` when the export began"""
    source: str | None = None
    """``model.source`` as recorded: None records the loaded source; a path relative to the bundle
    directory records weights that move with it (a training run's checkpoint beside its bundle)"""


def build_manifest(bundle_dir: Path, tokenizer_path: Path, inputs: ManifestInputs) -> Manifest:
    loaded = inputs.loaded
    # Every file the graph loads is listed, and so hashed into the bundle's identity.
    onnx_files = [ONNX_NAME, *(n for n in external_data_references(bundle_dir / ONNX_NAME) if n != ONNX_NAME)]
    return Manifest(
        files=describe_files(bundle_dir, [*onnx_files, TOKENIZER_NAME]),
        onnx_file=ONNX_NAME,
        tokenizer_file=TOKENIZER_NAME,
        kv_cache=inputs.layout,
        special_tokens=special_tokens_of(loaded, tokenizer_path),
        vocab_size=int(loaded.model.config.vocab_size),
        chat_template=getattr(loaded.tokenizer, "chat_template", None),
        model=describe_model(loaded, inputs.route, inputs.source),
        quantization=inputs.quantization,
        parity=inputs.parity,
        parent=inputs.parent,
        provenance={
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exporter_version": EXPORTER_VERSION,
            "versions": versions(),
            "export_seconds": round(time.perf_counter() - inputs.started, 1),
            **(inputs.provenance or {}),
        },
    )
