"""Shared fixtures: tiny random GPT-2 and Llama models built from config, and their bundles.

Every tiny model uses the same byte-level BPE tokenizer (``tiny_tokenizer``), trained on a
small corpus (multi-byte text included) and given a ChatML chat template like SmolLM2's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_tokenizer import train_byte_level_bpe

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The blacksmith wiped the soot from his hands and looked up at the stranger.",
    "Welcome to the Prancing Pony, traveller! Ale or cider?",
    "The guard captain says the gates close at sundown.",
    "Café crème, naïve façade, über Straße — déjà vu.",
    "日本語のテキストと絵文字 🐉🔥 も少し。",
    "You are Brom, the village blacksmith. Answer in one or two sentences.",
    "Greet a traveller who has just walked into your tavern.",
] * 4


def build_tokenizer_json(path: Path) -> None:
    train_byte_level_bpe(CORPUS, 400).save(str(path))


def build_tiny_model_dir(root: Path, family: str, hidden_size: int = 64) -> Path:
    """A 2-layer random model of ``family`` saved as a normal HF directory (safetensors); its 4
    attention heads are ``hidden_size / 4`` wide."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = root / f"tiny-{family}"
    out.mkdir(parents=True)
    build_tokenizer_json(root / f"tokenizer-{family}.json")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(root / f"tokenizer-{family}.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    vocab = len(tok)
    torch.manual_seed(0)
    common = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if family == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=hidden_size, n_layer=2, n_head=4, n_positions=256, **common)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **common,
        )
        model = LlamaForCausalLM(config)
    # Larger-than-default weights give peaked, non-uniform next-token distributions, so sampler
    # and parity tests see realistic logit gaps instead of near-ties.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2)
    model.eval().save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Play-log writers key player-id pseudonyms from a key of this test run (``NPCRL_KEY_FILE``,
    inherited by subprocesses), never from the user's own key file."""
    patch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("pseudonym-key") / "pseudonym.key"
    patch.setenv("NPCRL_KEY_FILE", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def auto_precision_is_fp32() -> Iterator[None]:
    """``model.precision = "auto"`` (the default) trains in fp32 in every test and its subprocesses,
    whatever the CPU, so the suite computes the same numbers on a CPU with bfloat16 units as on one
    without (``NPCRL_NATIVE_BF16``); the probe's own test clears it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("NPCRL_NATIVE_BF16", "0")
    yield
    patch.undo()


@pytest.fixture
def key_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pseudonym key file of this test alone (``NPCRL_KEY_FILE``; not created until a writer needs it)."""
    path = tmp_path_factory.mktemp("keys") / "pseudonym.key"
    monkeypatch.setenv("NPCRL_KEY_FILE", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model_dir(root, family) for family in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def tiny_bundles(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 bundles of both tiny families, plus q8 and q4 of the Llama one: ``{"gpt2-fp32": path, ...}``."""
    from exporters.export import export_bundle

    root = tmp_path_factory.mktemp("tiny-bundles")
    wanted = [("gpt2", "fp32"), ("llama", "fp32"), ("llama", "q8"), ("llama", "q4")]
    return {
        f"{family}-{quant}": export_bundle(tiny_model_dirs[family], root / f"{family}-{quant}", quant=quant).root
        for family, quant in wanted
    }


@pytest.fixture
def tiny_bundle(tiny_bundles: dict[str, Path]) -> Path:
    return tiny_bundles["llama-fp32"]
