"""The ``logits_to_keep`` input: a prefill computes the LM head for its last position only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from exporters.logits_to_keep import add_logits_to_keep, remove_logits_to_keep
from exporters.parity import OrtGraph
from npcrl.runtime.bundle import load_bundle
from npcrl.runtime.model import OnnxCausalLM
from npcrl.runtime.session import LOGITS_TO_KEEP


def _fused(bundle_path):
    bundle = load_bundle(bundle_path)
    if bundle.manifest.model.get("graph") != "fused":
        pytest.skip("the tiny Llama was exported through the traced route (onnxruntime-genai missing)")
    return bundle


@pytest.mark.parametrize("quant", ["fp32", "q8"])
def test_fused_bundles_take_it_and_keep_the_last_positions_logits(tiny_bundles, quant):
    bundle = _fused(tiny_bundles[f"llama-{quant}"])
    graph = OrtGraph(bundle.onnx_path, bundle.manifest.kv_cache)
    assert graph.keeps_logits
    ids = list(range(3, 23))
    every = graph.run(ids)[0]  # OrtGraph asks for every position
    assert every.shape[0] == len(ids)
    feeds = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        LOGITS_TO_KEEP: np.asarray([3], dtype=np.int64),
        **dict(zip(bundle.manifest.kv_cache.past_names(), graph.empty_past(), strict=True)),
    }
    last3 = graph.session.run(["logits"], feeds)[0][0]
    assert last3.shape[0] == 3
    np.testing.assert_allclose(last3, every[-3:], rtol=1e-3, atol=1e-3 * float(np.abs(every).max()))


def test_a_prefill_runs_the_lm_head_for_one_position(tiny_bundles):
    bundle = _fused(tiny_bundles["llama-q8"])
    model = OnnxCausalLM(bundle.root)
    shapes = []
    run_rows = model._run_rows

    def spy(*args, **kwargs):
        logits = run_rows(*args, **kwargs)
        shapes.append(logits.shape)
        return logits

    model._run_rows = spy  # type: ignore[method-assign]
    ids = model.tokenizer.encode("Greet a traveller who has just walked into your tavern.")
    last = model.forward(ids, model.new_cache())
    assert shapes == [(1, 1, model.vocab_size)]  # not (1, len(ids), V)
    every = model.forward(ids, model.new_cache(), all_logits=True)
    assert every.shape == (len(ids), model.vocab_size)
    np.testing.assert_allclose(last, every[-1], rtol=1e-3, atol=1e-3 * float(np.abs(every).max()))


def test_graphs_without_it_still_load_and_score(tiny_bundles, tmp_path):
    """A bundle exported before the input existed: the runtime binds it only where declared."""
    import shutil

    from npcrl.runtime.bundle import Manifest, describe_files, write_manifest

    source = _fused(tiny_bundles["llama-fp32"])
    old = tmp_path / "old"
    shutil.copytree(source.root, old)
    remove_logits_to_keep(old / "model.onnx")
    data = source.manifest.to_dict()
    data.pop("content_hash")
    data["files"] = describe_files(old, list(source.manifest.files))
    write_manifest(old, Manifest.from_dict(data, "test", check_hash=False))

    model = OnnxCausalLM(old)
    assert not model.keeps_logits
    ids = list(range(3, 15))
    assert model.forward(ids, model.new_cache(), all_logits=True).shape == (len(ids), model.vocab_size)
    add_logits_to_keep(old / "model.onnx")  # and the pass is idempotent on a graph that has it
    add_logits_to_keep(old / "model.onnx")
    inputs = [i.name for i in onnx.load(str(old / "model.onnx"), load_external_data=False).graph.input]
    assert inputs.count(LOGITS_TO_KEEP) == 1
