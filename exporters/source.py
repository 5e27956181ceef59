"""Load a base model for export or training: a local HF directory, a GGUF file, or a hub id.

Only safetensors weights are loaded (never pickled ``.bin``/``.pt``), and only architectures the
exporter knows how to give a KV-cache interface are accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npcrl.errors import ModelSourceError

# model_type -> family. Llama-family models share Llama's attention and cache layout.
SUPPORTED_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, fp32, eval mode
    tokenizer: Any  # transformers tokenizer with a fast backend
    source: str
    family: str


def _check_local_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path}: not a Hugging Face model directory (config.json is missing)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path / 'config.json'}: cannot be read as JSON: {exc}") from exc
    check_model_type(config.get("model_type"), str(path / "config.json"))
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        detail = (
            f" (found only pickled weights: {', '.join(pickles)}; convert them to safetensors first)" if pickles else ""
        )
        raise ModelSourceError(f"{path}: no *.safetensors weights{detail}")


def check_model_type(model_type: str | None, where: str) -> str:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelSourceError(
            f"{where}: model_type {model_type!r} is not supported; the exporter handles "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    return SUPPORTED_MODEL_TYPES[model_type]


def load_model(source: str | Path) -> LoadedModel:
    """Load ``source`` in fp32 eval mode with its tokenizer.

    ``source`` is an HF directory, a ``.gguf`` file, or (where a hub is reachable) a hub id.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = str(source)
    path = Path(text).expanduser()
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"{path}: GGUF file does not exist")
        load_from, kwargs = str(path.parent), {"gguf_file": path.name}
    elif path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{path}: expected a model directory or a .gguf file")
        _check_local_dir(path)
        load_from, kwargs = str(path), {"use_safetensors": True}
    elif text.count("/") == 1 and not text.startswith((".", "/", "~")):
        load_from, kwargs = text, {"use_safetensors": True}
    else:
        raise ModelSourceError(f"{text}: no such model directory or file (and not a hub id of the form org/name)")
    try:
        model = AutoModelForCausalLM.from_pretrained(load_from, dtype="float32", **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            load_from, **({"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {})
        )
    except ModelSourceError:
        raise
    except Exception as exc:  # corrupt files raise library-specific types (SafetensorError, ...)
        raise ModelSourceError(f"{text}: cannot load the model: {exc}") from exc
    family = check_model_type(getattr(model.config, "model_type", None), f"{text} (config)")
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=text, family=family)


def save_as_hf_dir(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save a loaded model as a plain safetensors HF directory (also for GGUF-loaded models)."""
    # transformers refuses save_pretrained on a GGUF-loaded model while its quantizer is attached;
    # the weights are already plain fp32 tensors, so detach it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out_dir))
