"""The bundle's tokenizer and chat template, without transformers.

Chat templates are Jinja, rendered in a sandbox the way transformers renders them (trim_blocks,
lstrip_blocks, ``raise_exception``, a non-escaping ``tojson``), so prompts built here are
token-for-token the prompts the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from npcrl.errors import BundleError

if TYPE_CHECKING:
    from npcrl.runtime.bundle import Bundle


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes; chat templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile_template(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


@dataclass(eq=False)
class BundleTokenizer:
    """``tokenizers.Tokenizer`` plus the chat template and special-token knowledge of a bundle."""

    tokenizer: Tokenizer = field(repr=False)  # its repr holds the whole vocabulary
    chat_template: str | None
    special_token_strings: Sequence[str]  # kept as a tuple
    special_token_ids: Collection[int]  # kept as a frozenset
    bos_token: str | None = None
    eos_token: str | None = None

    def __post_init__(self) -> None:
        self.special_token_strings = tuple(self.special_token_strings)
        self.special_token_ids = frozenset(self.special_token_ids)

    @classmethod
    def from_file(
        cls,
        path: Path,
        chat_template: str | None,
        special_token_strings: Sequence[str],
        special_token_ids: Sequence[int],
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
    ) -> BundleTokenizer:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise BundleError(f"{path}: not a valid tokenizer.json: {exc}") from exc
        bos = tokenizer.id_to_token(bos_token_id) if bos_token_id is not None else None
        eos = tokenizer.id_to_token(eos_token_id) if eos_token_id is not None else None
        return cls(tokenizer, chat_template, special_token_strings, special_token_ids, bos, eos)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> BundleTokenizer:
        """The tokenizer a bundle's manifest describes (its ``tokenizer.json``, template and special tokens)."""
        manifest = bundle.manifest
        special = manifest.special_tokens
        return cls.from_file(
            bundle.tokenizer_path,
            manifest.chat_template,
            special.special_token_strings,
            special.special_token_ids,
            bos_token_id=special.bos_token_id,
            eos_token_id=special.eos_token_ids[0] if special.eos_token_ids else None,
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings inside it ARE parsed as special tokens:
        callers feeding untrusted text must strip them first (see ``strip_special_tokens``)."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def strip_special_tokens(self, text: str) -> str:
        """Remove every special-token string from text (used on player input and model output)."""
        # Longest first, so that '<|im_start|>' is removed before a shorter token it contains.
        for token in sorted(self.special_token_strings, key=len, reverse=True):
            text = text.replace(token, "")
        return text

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render a conversation the way the model expects it; raises if the bundle has no template."""
        if not self.chat_template:
            raise BundleError("this bundle has no chat template; build prompts as plain text instead")
        template = _compile_template(self.chat_template)
        return template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **extra,
        )

    def encode_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))
