"""Running a batch's common prompt prefix once (``npcrl.train.shared_prefix``) is exact: hidden
states, PPO outputs, reward-model predictions and gradients equal those of full passes. So is
padding every pass to a few shapes (``model.pad_shapes``, ``npcrl.train.shapes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from training_turns import VOCAB, make_turn  # noqa: E402

from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train import shared_prefix  # noqa: E402
from npcrl.train.batching import collate  # noqa: E402
from npcrl.train.config import ModelConfig  # noqa: E402
from npcrl.train.data import TrainingTurn  # noqa: E402
from npcrl.train.policy import (  # noqa: E402
    batch_inputs,
    build_policy,
    decoder_of,
    lm_head_of,
    resolve_base_weights,
)
from npcrl.train.shapes import SEQUENCE_MULTIPLE, STEP_MULTIPLE  # noqa: E402
from npcrl.train.shared_prefix import (  # noqa: E402
    MIN_SHARED_PREFIX,
    decoder_hidden,
    group_by_prefix,
    prefixes_together,
    shared_prefix_length,
)


def persona_turns(vocab: int, seed: int = 0) -> list[TrainingTurn]:
    """Five turns: four with a 60-token common prefix and prompts/responses of different lengths, one
    with a different start (so group_by_prefix has two personas to separate)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    prefix = ids(60)
    turns = [
        make_turn(prefix + ids(extra), ids(resp), k)
        for k, (extra, resp) in enumerate([(9, 7), (30, 12), (1, 3), (17, 12)])
    ]
    turns.append(make_turn(ids(70), ids(5), 4))
    return turns


@pytest.fixture(scope="module", params=["llama-fp32", "gpt2-fp32"])
def policy(request: pytest.FixtureRequest, tiny_bundles: dict[str, Path]) -> Any:
    torch.set_num_threads(1)
    bundle = load_bundle(tiny_bundles[request.param])
    targets = ["c_attn", "c_proj"] if request.param.startswith("gpt2") else ["q_proj", "k_proj", "v_proj", "o_proj"]
    lora = ModelConfig(mode="lora", lora_r=4, lora_target_modules=targets, pad_shapes=False)
    built = build_policy(resolve_base_weights(bundle, None), lora, seed=0)
    # Non-zero adapters, so gradients through the prefix's keys and values are not trivially zero.
    with torch.no_grad():
        for name, param in built.module.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return built


def no_sharing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_prefix, "MIN_SHARED_PREFIX", 10**9)


def test_shared_prefix_length_is_the_common_real_prefix_capped() -> None:
    ids = torch.tensor([[5] * 40 + [1, 2], [5] * 40 + [3, 0]])
    mask = torch.ones_like(ids)
    assert shared_prefix_length(ids, mask, limit=100) == 40
    assert shared_prefix_length(ids, mask, limit=35) == 35
    assert shared_prefix_length(ids, mask, limit=MIN_SHARED_PREFIX - 1) == 0
    assert shared_prefix_length(ids[:1], mask[:1], limit=100) == 0  # one row: nothing to share
    mask[1, 36:] = 0  # padding does not count as shared even where the ids agree
    assert shared_prefix_length(ids, mask, limit=100) == 36
    ids[1, 3] = 9
    assert shared_prefix_length(ids, mask, limit=100) == 0  # 3 < MIN_SHARED_PREFIX


def test_shared_prefix_in_blocks_is_whole_blocks_of_the_common_prefix() -> None:
    ids = torch.tensor([[5] * 70 + [1, 2], [5] * 70 + [3, 0]])
    mask = torch.ones_like(ids)
    assert shared_prefix_length(ids, mask, limit=100, blocks=True) == 2 * SEQUENCE_MULTIPLE
    assert shared_prefix_length(ids, mask, limit=60, blocks=True) == SEQUENCE_MULTIPLE
    assert shared_prefix_length(ids, mask, limit=SEQUENCE_MULTIPLE - 1, blocks=True) == 0
    assert shared_prefix_length(ids, mask, limit=100, blocks=False) == 70


def test_decoder_hidden_and_gradients_equal_the_full_pass(policy: Any) -> None:
    turns = persona_turns(VOCAB)[:4]
    batch = collate(turns, pad_id=0)
    decoder = decoder_of(policy.module.lm)
    params = dict(policy.trainable_parameters())
    width = batch.input_ids.shape[1] - 60
    hidden_size = policy.module.value_head.in_features
    direction = torch.randn((1, width, hidden_size), generator=torch.Generator().manual_seed(0))
    results = []
    for share in (False, True):
        for p in params.values():
            p.grad = None
        hidden, offset = decoder_hidden(decoder, batch.input_ids, batch.attention_mask, limit=60, share_prefix=share)
        after = hidden[:, 60 - offset :]  # the same positions (60 on) in both passes
        mask = batch.attention_mask[:, 60:].unsqueeze(-1).float()
        (after * mask * direction).sum().backward()  # a random readout: |h|^2 is ~constant after the final norm
        grads = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
        results.append((offset, hidden.detach(), grads))
    (plain_offset, plain, plain_grads), (offset, shared, shared_grads) = results
    assert plain_offset == 0 and offset == 60
    real = batch.attention_mask[:, 60:].bool()
    torch.testing.assert_close(shared[real], plain[:, 60:][real], atol=2e-5, rtol=1e-4)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    # Relative to the whole gradient's scale: with the fixture's large random weights attention is
    # nearly one-hot, so some query gradients are tiny and mostly rounding noise.
    scale = float(torch.cat([g.flatten() for g in plain_grads.values()]).norm())
    for name, a in plain_grads.items():
        error = float((shared_grads[name] - a).norm())
        assert error <= 1e-5 * scale, (name, error, scale)


def test_policy_forward_and_score_equal_with_and_without_sharing(policy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    turns = persona_turns(VOCAB, seed=1)[:4]
    batch = collate(turns, pad_id=0)
    calls: list[int] = []
    real_decoder_hidden = shared_prefix.decoder_hidden

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real_decoder_hidden(*args, **kwargs)
        calls.append(out[1])
        return out

    monkeypatch.setattr("npcrl.train.policy.decoder_hidden", spy)
    shared_out = policy.module(*batch_inputs(batch))
    shared_score = policy.score(batch, reference_is_policy=False)
    assert calls and all(offset == 60 for offset in calls)  # the shared path really ran
    no_sharing(monkeypatch)
    calls.clear()
    plain_out = policy.module(*batch_inputs(batch))
    plain_score = policy.score(batch, reference_is_policy=False)
    assert calls and all(offset == 0 for offset in calls)
    mask = batch.mask.bool()
    for a, b in zip(plain_out + plain_score, shared_out + shared_score, strict=True):
        torch.testing.assert_close(b.detach()[mask], a.detach()[mask], atol=5e-5, rtol=1e-4)


def test_padded_shapes_give_the_same_outputs_and_gradients(policy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.pad_shapes``: the body sees widths, shared prefixes and suffixes in whole blocks and
    the output layer whole step blocks, while log-probs, values, entropy, the scores and the
    gradients equal the unpadded passes'."""
    turns = persona_turns(VOCAB, seed=3)[:4]  # a 60-token common prefix; widths and steps not whole blocks
    batch = collate(turns, pad_id=0)
    assert batch.input_ids.shape[1] % SEQUENCE_MULTIPLE and batch.mask.shape[1] % STEP_MULTIPLE
    seen: list[tuple[str, int]] = []

    def body(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("past_key_values")
        seen.append(("width", kwargs["input_ids"].shape[1]))
        seen.append(("prefix", 0 if cache is None else cache.get_seq_length()))

    def head(_: Any, args: Any) -> None:
        seen.append(("steps", args[0].shape[1]))

    hooks = [
        decoder_of(policy.module.lm).register_forward_pre_hook(body, with_kwargs=True),
        lm_head_of(policy.module.lm).register_forward_pre_hook(head),
    ]
    params = dict(policy.trainable_parameters()) | {
        f"value_head.{n}": p for n, p in policy.module.value_head.named_parameters()
    }
    mask = batch.mask.bool()
    results = []
    try:
        for pad in (False, True):
            monkeypatch.setattr(policy.module, "pad_shapes", pad)
            seen.clear()
            for p in params.values():
                p.grad = None
            logprobs, values, entropy = policy.module(*batch_inputs(batch))
            (logprobs[mask].sum() + values[mask].sum()).backward()
            grads = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
            score = policy.score(batch, reference_is_policy=False)
            results.append(([t.detach() for t in (logprobs, values, entropy, *score)], grads, list(seen)))
    finally:
        for hook in hooks:
            hook.remove()
    (plain, plain_grads, plain_seen), (padded, padded_grads, padded_seen) = results
    assert any(n % SEQUENCE_MULTIPLE for kind, n in plain_seen if kind == "width")  # the fixture tests something
    assert {kind for kind, _ in padded_seen} == {"width", "prefix", "steps"}
    for kind, n in padded_seen:
        assert n % (STEP_MULTIPLE if kind == "steps" else SEQUENCE_MULTIPLE) == 0, (kind, n, padded_seen)
    assert ("prefix", SEQUENCE_MULTIPLE) in padded_seen  # the 60 shared tokens run as one whole block
    for a, b in zip(plain[:3] + plain[3:7], padded[:3] + padded[3:7], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b[mask], a[mask], atol=5e-5, rtol=1e-4)
    assert plain_grads.keys() == padded_grads.keys() and "value_head.weight" in plain_grads
    scale = float(torch.cat([g.flatten() for g in plain_grads.values()]).norm())
    for name, a in plain_grads.items():
        assert float((padded_grads[name] - a).norm()) <= 1e-5 * scale, name


def test_padding_stops_at_the_models_last_position() -> None:
    """GPT-2 has no position past ``n_positions``: a 98-token row of a 100-position model is padded
    to 100, not 128, and scores as it does unpadded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from npcrl.train.policy import response_hidden

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=100)).eval()
    turns = [make_turn([3 + i % 50 for i in range(90)], [5, 6, 7, 8, 9, 10, 11, 12], 0)]  # 90 + 8 = 98 tokens
    batch = collate(turns, pad_id=0)
    widths: list[int] = []
    decoder_of(lm).register_forward_pre_hook(
        lambda _module, _args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        plain = response_hidden(lm, batch.input_ids, batch.attention_mask, batch.positions)
        padded = response_hidden(lm, batch.input_ids, batch.attention_mask, batch.positions, pad_shapes=True)
    assert widths == [98, 100]
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=1e-4)


def test_reward_model_predictions_equal_with_and_without_sharing(
    tiny_bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from npcrl.train.config import RewardModelConfig
    from npcrl.train.reward_model import build_reward_model

    torch.set_num_threads(1)
    bundle = load_bundle(tiny_bundles["llama-fp32"])
    turns = persona_turns(VOCAB, seed=2)
    model, _ = build_reward_model(
        resolve_base_weights(bundle, None), RewardModelConfig(backbone="lora"), ModelConfig(mode="lora", lora_r=4), 0
    )
    shared = model.predict(turns, batch=4)
    no_sharing(monkeypatch)
    plain = model.predict(turns, batch=4)
    assert shared == pytest.approx(plain, abs=1e-4)
    solo = [model.predict([t], batch=1)[0] for t in turns]  # order in the batch does not matter
    assert shared == pytest.approx(solo, abs=1e-4)


def test_group_by_prefix_keeps_personas_apart_and_covers_every_row() -> None:
    turns = persona_turns(VOCAB)
    prompts = [t.prompt_ids for t in turns]
    rows = [4, 0, 3, 1, 2]
    chunks = group_by_prefix(rows, prompts, size=3)
    assert sorted(r for chunk in chunks for r in chunk) == sorted(rows)
    assert all(len(chunk) <= 3 for chunk in chunks)
    for chunk in chunks:  # the odd one out is never batched with the persona's turns
        assert 4 not in chunk or chunk == [4]
    assert group_by_prefix(rows, prompts, size=3) == chunks  # deterministic
    assert group_by_prefix(list(reversed(rows)), prompts, size=3) == chunks


def test_prefixes_together_keeps_each_persona_contiguous_in_the_given_order() -> None:
    """``ppo.minibatch_order = "by_prefix"``: one persona's rows are adjacent (so a minibatch cut
    from the order holds as few personas as it can), each persona's rows in the shuffled order."""
    import numpy as np

    turns = persona_turns(VOCAB) + persona_turns(VOCAB, seed=1)  # two prefixes of four, two odd ones
    prompts = [t.prompt_ids for t in turns]
    order = [int(i) for i in np.random.default_rng(3).permutation(len(turns))]
    together = prefixes_together(order, prompts, np.random.default_rng(4))
    assert sorted(together) == list(range(len(turns)))
    groups = [sorted(g) for g in ([0, 1, 2, 3], [5, 6, 7, 8], [4], [9])]
    for group in groups:
        places = sorted(together.index(row) for row in group)
        assert places == list(range(places[0], places[0] + len(group))), (group, together)
        assert [together[p] for p in places] == [row for row in order if row in group]
    assert prefixes_together(order, prompts, np.random.default_rng(4)) == together  # seeded
    firsts = {prefixes_together(order, prompts, np.random.default_rng(seed))[0] for seed in range(20)}
    assert len(firsts) > 1  # the groups' order is drawn, not fixed
