"""The two structured sections of a bundle manifest: the KV-cache layout and the special tokens.

Each parses and bounds its ``manifest.json`` section (``from_dict``, a BundleError naming the field
at fault) and writes it back (``to_dict``); ``npcrl.runtime.bundle`` holds the manifest around them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import npcrl.runtime.manifest_fields as mf
from npcrl.errors import BundleError

_KV_KEYS = frozenset(
    {"num_layers", "num_kv_heads", "head_dim", "dtype", "axes", "past_name", "present_name", "position_ids"}
)
_SPECIAL_KEYS = frozenset(
    {"eos_token_ids", "bos_token_id", "pad_token_id", "special_token_ids", "special_token_strings"}
)


@dataclass(frozen=True)
class KVLayout:
    """Shape of the KV cache the ONNX graph takes as ``past.*`` and returns as ``present.*``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float32"
    # Axis order of every past/present tensor (the only order the runtime's KV pool supports).
    axes: tuple[str, ...] = ("batch", "kv_heads", "seq", "head_dim")
    # Graph tensor names; {layer} and {kind} (key/value) are filled in per tensor.
    past_name: str = "past.{layer}.{kind}"
    present_name: str = "present.{layer}.{kind}"
    # Whether the graph takes position_ids (the fused graph derives positions from attention_mask).
    position_ids: bool = True

    def past_names(self) -> list[str]:
        return [self.past_name.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def present_names(self) -> list[str]:
        return [self.present_name.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def bytes_per_token(self) -> int:
        itemsize = {"float32": 4, "float16": 2}[self.dtype]
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"axes": list(self.axes)}  # JSON has lists, not tuples

    @classmethod
    def from_dict(cls, data: Any, where: str) -> KVLayout:
        data = mf.mapping(data, "kv_cache", where, _KV_KEYS)
        for key in ("num_layers", "num_kv_heads", "head_dim"):
            if key not in data:
                raise BundleError(f"{where}: field 'kv_cache.{key}' is missing")
        dtype = mf.text(data.get("dtype", "float32"), "kv_cache.dtype", where, 16)
        if dtype not in ("float32", "float16"):
            raise BundleError(f"{where}: field 'kv_cache.dtype' = {dtype!r} is not supported")
        axes = data.get("axes", list(cls.axes))
        if axes != list(cls.axes):
            raise BundleError(f"{where}: field 'kv_cache.axes' = {str(axes)[:80]} must be {list(cls.axes)}")
        layout = cls(
            num_layers=mf.integer(data["num_layers"], "kv_cache.num_layers", where, 1, mf.MAX_LAYERS),
            num_kv_heads=mf.integer(data["num_kv_heads"], "kv_cache.num_kv_heads", where, 1, mf.MAX_HEADS),
            head_dim=mf.integer(data["head_dim"], "kv_cache.head_dim", where, 1, mf.MAX_HEAD_DIM),
            dtype=dtype,
            past_name=mf.tensor_name_pattern(data.get("past_name", cls.past_name), "kv_cache.past_name", where),
            present_name=mf.tensor_name_pattern(
                data.get("present_name", cls.present_name), "kv_cache.present_name", where
            ),
            position_ids=mf.boolean(data.get("position_ids", True), "kv_cache.position_ids", where),
        )
        if layout.past_name == layout.present_name:
            raise BundleError(f"{where}: fields 'kv_cache.past_name' and 'present_name' must differ")
        return layout


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the runtime must know: where to stop, and which ids never reach the player."""

    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    # Every special/added-control token id (stripped from text, refused in player input).
    special_token_ids: tuple[int, ...] = ()
    special_token_strings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        lists = ("eos_token_ids", "special_token_ids", "special_token_strings")
        return dataclasses.asdict(self) | {name: list(getattr(self, name)) for name in lists}

    @classmethod
    def from_dict(cls, data: Any, where: str, vocab_size: int) -> SpecialTokens:
        """EOS and BOS ids are fed to or sampled from the model, so they must lie below ``vocab_size``."""
        data = mf.mapping(data, "special_tokens", where, _SPECIAL_KEYS)
        if "eos_token_ids" not in data:
            raise BundleError(f"{where}: field 'special_tokens.eos_token_ids' is missing")
        top = vocab_size - 1
        count = mf.MAX_SPECIAL_TOKENS
        return cls(
            eos_token_ids=mf.integer_list(data["eos_token_ids"], "special_tokens.eos_token_ids", where, top, count),
            bos_token_id=mf.optional_integer(data.get("bos_token_id"), "special_tokens.bos_token_id", where, 0, top),
            pad_token_id=mf.optional_integer(
                data.get("pad_token_id"), "special_tokens.pad_token_id", where, 0, mf.MAX_VOCAB
            ),
            special_token_ids=mf.integer_list(
                data.get("special_token_ids", []), "special_tokens.special_token_ids", where, mf.MAX_VOCAB, count
            ),
            special_token_strings=mf.text_list(
                data.get("special_token_strings", []), "special_tokens.special_token_strings", where, count
            ),
        )
