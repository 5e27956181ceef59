"""Exporter: parity with torch, cache equivalence, quantised quality, clear errors on bad sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.export import ExportError, export_bundle
from npcrl.errors import ModelSourceError
from npcrl.runtime.bundle import load_bundle
from npcrl.runtime.model import OnnxCausalLM


@pytest.mark.parametrize("family", ["gpt2", "llama"], ids=["gpt2", "llama"])
def test_manifest_records_passed_parity_and_kv_layout(tiny_bundles, family):
    bundle = load_bundle(tiny_bundles[f"{family}-fp32"])
    manifest = bundle.manifest
    assert manifest.parity["passed"] is True
    assert manifest.parity["greedy_cached_equals_uncached"] is True
    assert manifest.parity["prefill_max_abs_logit_diff"] <= manifest.parity["logit_atol"]
    assert manifest.parity["step_max_abs_kv_diff"] <= manifest.parity["kv_atol"]
    expected_heads = 4 if family == "gpt2" else 2  # GPT-2 has no GQA; the tiny Llama has 2 KV heads
    assert (manifest.kv_cache.num_layers, manifest.kv_cache.num_kv_heads, manifest.kv_cache.head_dim) == (
        2,
        expected_heads,
        16,
    )
    assert manifest.chat_template and "<|im_start|>" in manifest.chat_template
    assert manifest.special_tokens.eos_token_ids == (2,)
    assert manifest.quantization["method"] == "none"


def torch_and_onnx(tiny_model_dirs, tiny_bundles, family: str) -> tuple[Any, OnnxCausalLM]:
    """The tiny ``family`` model in torch (eval mode) and its fp32 ONNX bundle on the runtime."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family]).eval()
    return reference, OnnxCausalLM(tiny_bundles[f"{family}-fp32"])


@pytest.mark.parametrize("family", ["gpt2", "llama"], ids=["gpt2", "llama"])
def test_onnx_logits_match_torch_for_prefill_and_cached_steps(tiny_model_dirs, tiny_bundles, family):
    import torch

    reference, model = torch_and_onnx(tiny_model_dirs, tiny_bundles, family)
    ids = model.tokenizer.encode("The guard captain says the gates close at sundown.")
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids])).logits[0].numpy()
    cache = model.new_cache()
    prefill = model.forward(ids[:5], cache, all_logits=True)
    steps = [model.forward([t], cache) for t in ids[5:]]
    got = np.concatenate([prefill, np.stack(steps)])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_incremental_and_one_shot_forward_agree(tiny_bundle):
    model = OnnxCausalLM(tiny_bundle)
    ids = model.tokenizer.encode("Welcome to the Prancing Pony, traveller! Ale or cider?")
    one_shot = model.forward(ids, model.new_cache(), all_logits=True)
    cache = model.new_cache()
    chunks = [ids[:3], ids[3:4], ids[4:9], *[[t] for t in ids[9:]]]
    incremental = np.concatenate([model.forward(c, cache, all_logits=True) for c in chunks])
    np.testing.assert_allclose(incremental, one_shot, atol=1e-5)
    assert cache.token_ids == ids


@pytest.mark.parametrize("family", ["gpt2", "llama"], ids=["gpt2", "llama"])
def test_runtime_greedy_matches_hf_generate(tiny_model_dirs, tiny_bundles, family):
    import torch

    from npcrl.runtime.sampler import SamplerConfig

    reference, model = torch_and_onnx(tiny_model_dirs, tiny_bundles, family)
    prompt = model.tokenizer.encode("The blacksmith wiped the soot")
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
    result = model.generate_text(prompt, SamplerConfig(temperature=0.0, max_new_tokens=12))
    assert result.token_ids == expected[: len(result.token_ids)]
    assert result.stop_reason in ("eos", "max_new_tokens")


@pytest.mark.parametrize("quant", ["q8", "q4"], ids=["q8", "q4"])
def test_quantised_bundle_records_quality_against_fp32(tiny_bundles, quant):
    manifest = load_bundle(tiny_bundles[f"llama-{quant}"]).manifest
    quality = manifest.quantization["quality"]
    assert manifest.quantization["bits"] == int(quant[1:])
    assert quality["positions"] > 100 and 0.0 <= quality["top1_agreement"] <= 1.0
    assert quality["kl_mean"] >= 0.0
    assert quality["perplexity_quantized"] > 1.0
    assert quality["within_bound"] is (quality["kl_mean"] <= quality["kl_bound"])
    assert 0.0 <= quality["cache_kl_mean"] <= quality["kl_bound"]  # the KV cache reproduces the graph


def test_q8_is_closer_to_fp32_than_q4_and_smaller_than_fp32(tiny_bundles):
    q8 = load_bundle(tiny_bundles["llama-q8"]).manifest
    q4 = load_bundle(tiny_bundles["llama-q4"]).manifest
    fp32 = load_bundle(tiny_bundles["llama-fp32"]).manifest
    assert q8.quantization["quality"]["kl_mean"] < q4.quantization["quality"]["kl_mean"]
    assert q8.quantization["quality"]["kl_mean"] < 0.01
    size = {
        name: sum(entry["bytes"] for file, entry in m.files.items() if ".onnx" in file)
        for name, m in (("fp32", fp32), ("q8", q8), ("q4", q4))
    }
    assert size["q4"] < size["q8"] < size["fp32"]


def test_quantised_logits_stay_close_to_fp32(tiny_bundles):
    fp32 = OnnxCausalLM(tiny_bundles["llama-fp32"])
    q8 = OnnxCausalLM(tiny_bundles["llama-q8"])
    ids = fp32.tokenizer.encode("Greet a traveller who has just walked into your tavern.")
    a = fp32.forward(ids, fp32.new_cache(), all_logits=True)
    b = q8.forward(ids, q8.new_cache(), all_logits=True)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


def test_unsupported_architecture_is_named(tmp_path):
    model_dir = tmp_path / "bert"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelSourceError, match=r"config\.json: model_type 'bert' is not supported"):
        export_bundle(model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_is_named(tmp_path):
    with pytest.raises(ModelSourceError, match="no such model directory"):
        export_bundle(tmp_path / "nowhere", tmp_path / "out")


def test_pickled_weights_are_refused(tiny_model_dirs, tmp_path):
    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_model_dirs["llama"], model_dir)
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"only pickled weights: pytorch_model\.bin"):
        export_bundle(model_dir, tmp_path / "out")


def test_corrupt_weights_give_a_clear_error(tiny_model_dirs, tmp_path):
    model_dir = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dirs["llama"], model_dir)
    (model_dir / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelSourceError, match="cannot load the model"):
        export_bundle(model_dir, tmp_path / "out")


def test_existing_bundle_is_not_overwritten_without_force(tiny_model_dirs, tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_model_dirs["llama"], target)
    assert (target / "manifest.json").read_bytes() == before


def test_unknown_quantisation_is_refused(tiny_model_dirs, tmp_path):
    with pytest.raises(ExportError, match="'int3' is not one of"):
        export_bundle(tiny_model_dirs["llama"], tmp_path / "out", quant="int3")


def test_export_leaves_no_staging_directory(tiny_bundles):
    parent = Path(tiny_bundles["llama-fp32"]).parent
    assert not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def head_dim_8_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose head size (8) onnxruntime's CPU GroupQueryAttention cannot run."""
    from conftest import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("head-dim-8"), "llama", hidden_size=32)


def test_explicit_fused_route_is_refused_for_a_head_size_the_kernel_cannot_run(head_dim_8_llama, tmp_path):
    with pytest.raises(ExportError, match="fused graph cannot run this model: head size 8 is not a multiple of 16"):
        export_bundle(head_dim_8_llama, tmp_path / "out", quant="fp32", graph="fused")
    assert not (tmp_path / "out").exists()


def test_auto_route_takes_the_traced_graph_for_a_head_size_the_kernel_cannot_run(head_dim_8_llama, tmp_path, capfd):
    from exporters.fused_export import fused_export_available

    bundle = export_bundle(head_dim_8_llama, tmp_path / "out", quant="fp32")
    assert bundle.manifest.model["graph"] == "torch"
    assert bundle.manifest.kv_cache.head_dim == 8
    if fused_export_available():
        assert "not using the fused graph: head size 8 is not a multiple of 16" in capfd.readouterr().err
    model = OnnxCausalLM(bundle.root)
    assert model.forward(model.tokenizer.encode("Ale or cider?"), model.new_cache()).shape == (model.vocab_size,)


def test_a_replacement_cut_off_between_its_renames_gets_the_old_bundle_back(tmp_path):
    from exporters.export import restore_cut_off_swap

    out = tmp_path / "bundle"
    aside = tmp_path / ".bundle.old"  # where a replacement puts the old bundle before renaming the new one in
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    assert restore_cut_off_swap(out)
    assert (out / "manifest.json").read_text() == "{}" and not aside.exists()
    assert not restore_cut_off_swap(out)  # a bundle in place is left alone
    aside.mkdir()
    assert not restore_cut_off_swap(out) and aside.exists()  # the finished swap's leftover is not restored over it


def test_a_fused_graph_records_the_builders_release_not_a_checkouts_commit(tiny_bundles):
    """The builder appends the commit of the git checkout its package sits in: installed in a virtual
    environment inside a project's checkout, the graph file changed with every project commit."""
    from importlib.metadata import version

    import onnx

    from exporters.fused_export import fused_export_available

    if not fused_export_available():
        pytest.skip("onnxruntime-genai is not installed: no fused graph to read")
    for name in ("llama-fp32", "llama-q8", "llama-q4"):
        graph = onnx.load(str(tiny_bundles[name] / "model.onnx"), load_external_data=False)
        assert graph.producer_name == "onnxruntime-genai", name  # the fused route built it
        assert graph.producer_version == version("onnxruntime-genai"), name
