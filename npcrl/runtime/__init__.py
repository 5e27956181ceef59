"""The in-game model runtime: bundles, the onnxruntime session, the KV pool and its queue, the
batch scheduler, the sampler and streaming. Never imports torch or pygame."""

from __future__ import annotations

from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.session import SessionOptions, default_thread_count

__all__ = ["OnnxCausalLM", "SessionOptions", "default_thread_count"]
