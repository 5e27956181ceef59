"""Fused export for Llama-family models through onnxruntime-genai's model builder.

The builder writes a graph of fused CPU kernels — GroupQueryAttention with rotary embedding
inside, SkipSimplifiedLayerNormalization, packed QKV and gate/up projections, MatMulNBits for
8/4-bit weights with int8 activations (accuracy level 4) — about 400 nodes where the traced
torch export has about 4,000. We only take its ONNX graph and weights; npcrl's runtime drives it
with plain onnxruntime (which releases the GIL, unlike genai's own generator).

Graph interface: ``input_ids``, ``attention_mask`` (positions are derived from it, so there is
no ``position_ids``), ``past_key_values.{layer}.key|value`` in, ``logits`` and
``present.{layer}.key|value`` out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from npcrl.errors import NpcrlError
from npcrl.runtime.bundle import KVLayout

FUSED_FAMILIES = ("llama",)
PRECISIONS = {None: "fp32", 8: "int8", 4: "int4"}


class FusedExportError(NpcrlError):
    """The model builder failed."""


def fused_export_available() -> bool:
    try:
        import onnxruntime_genai.models.builder  # noqa: F401
    except ImportError:
        return False
    return True


def fused_unsupported_reason(config: Any, layout: KVLayout) -> str | None:
    """Why the fused graph cannot run this model on CPU, or None when it can.

    onnxruntime's CPU GroupQueryAttention with rotary embedding inside refuses, at the first run
    (not when the graph is built or loaded): a head size that is not a multiple of 16, a rotary
    dimension whose half is not a multiple of 8 (the cos/sin cache width), and query heads that
    are not a multiple of the KV heads.
    """
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    if layout.head_dim % 16:
        return f"head size {layout.head_dim} is not a multiple of 16, which GroupQueryAttention on CPU requires"
    if heads <= 0 or heads % layout.num_kv_heads:
        return f"{heads} attention heads are not a multiple of the {layout.num_kv_heads} KV heads"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    rope = rope if isinstance(rope, dict) else {}
    partial = float(getattr(config, "partial_rotary_factor", None) or rope.get("partial_rotary_factor") or 1.0)
    rotary = int(layout.head_dim * partial)
    if rotary % 16:
        return f"rotary dimension {rotary} is not a multiple of 16, which GroupQueryAttention on CPU requires"
    return None


def fused_kv_layout(base: KVLayout) -> KVLayout:
    return KVLayout(
        num_layers=base.num_layers,
        num_kv_heads=base.num_kv_heads,
        head_dim=base.head_dim,
        dtype="float32",
        past_name="past_key_values.{layer}.{kind}",
        present_name="present.{layer}.{kind}",
        position_ids=False,
    )


def export_fused(hf_dir: Path, out_dir: Path, bits: int | None, block_size: int = 32) -> Path:
    """Build ``out_dir/model.onnx`` (+ ``model.onnx.data``) from the safetensors HF directory ``hf_dir``."""
    precision = PRECISIONS[bits]
    work = out_dir / f"_builder_{precision}"
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(work / "out"),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(work / "cache"),
    ]
    if bits is not None:
        # Accuracy level 4 = int8 activations inside MatMulNBits: the fast CPU kernel. Level 0
        # falls back to dequantising whole weights each call (measured 50x slower for 8 bits).
        # (onnxruntime-genai 0.18 reads "accuracy_level" and "block_size"; the "int4_"-prefixed
        # names its help still calls aliases are silently ignored, leaving its defaults.)
        cmd += ["--extra_options", "accuracy_level=4", f"block_size={block_size}"]
    print(f"[npcrl export] building the fused {precision} graph", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    built = work / "out" / "model.onnx"
    if proc.returncode != 0 or not built.is_file():
        raise FusedExportError(
            f"onnxruntime-genai's model builder failed on {hf_dir} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # The graph names its weights file "model.onnx.data"; moving both keeps that reference valid.
    for name in ("model.onnx", "model.onnx.data"):
        if (work / "out" / name).is_file():
            shutil.move(str(work / "out" / name), out_dir / name)
    shutil.rmtree(work)
    stamp_builder_version(out_dir / "model.onnx")
    print(f"[npcrl export] fused graph built in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return out_dir / "model.onnx"


def stamp_builder_version(path: Path) -> None:
    """Record the builder's release alone as the graph's ``producer_version``.

    The builder appends the commit of whatever git checkout holds its installed package: run from a
    virtual environment inside a project's checkout, that is the project's commit, which is not the
    builder's. The graph file then changed with every commit of the project, though its nodes and
    weights did not, and two exports of one model could not be told equal by the graph's sha256 in
    their manifests. (The bundle id differs between exports anyway: it covers the provenance,
    export time included.)"""
    from importlib.metadata import version

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    model.producer_version = version("onnxruntime-genai")
    onnx.save(model, str(path))
