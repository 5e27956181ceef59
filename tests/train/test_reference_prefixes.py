"""The reference's persona prefixes are computed once per run (``npcrl.train.prefix_cache``): later
scoring passes run only the rows' own suffixes through it, and score exactly what a full pass does.
And the entropy monitor is not differentiated when no entropy bonus is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from training_turns import VOCAB, make_turn  # noqa: E402

from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.train.batching import Batch, collate  # noqa: E402
from npcrl.train.config import ModelConfig  # noqa: E402
from npcrl.train.data import TrainingTurn  # noqa: E402
from npcrl.train.policy import (  # noqa: E402
    batch_inputs,
    build_policy,
    decoder_of,
    resolve_base_weights,
    response_hidden,
    response_logits,
)


def turns_of_one_persona() -> list[TrainingTurn]:
    """Four turns with a 60-token persona prefix; the first two also share the next 10 tokens."""
    g = torch.Generator().manual_seed(3)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    persona, history = ids(60), ids(10)
    return [
        make_turn(persona + history + ids(5), ids(6), 0),
        make_turn(persona + history + ids(12), ids(4), 1),
        make_turn(persona + ids(8), ids(7), 2),
        make_turn(persona + ids(3), ids(5), 3),
    ]


@pytest.fixture(params=["llama-fp32", "gpt2-fp32"])
def policy(request: pytest.FixtureRequest, tiny_bundles: dict[str, Path]) -> Any:
    torch.set_num_threads(1)
    bundle = load_bundle(tiny_bundles[request.param])
    targets = ["c_attn", "c_proj"] if request.param.startswith("gpt2") else ["q_proj", "k_proj", "v_proj", "o_proj"]
    built = build_policy(
        resolve_base_weights(bundle, None),
        ModelConfig(mode="lora", lora_r=4, lora_target_modules=targets, pad_shapes=False),
        seed=0,
    )
    with torch.no_grad():  # adapters that move the policy away from the reference
        for name, param in built.module.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return built


def uncached_reference_logprobs(policy: Any, batch: Batch) -> torch.Tensor:
    with torch.no_grad(), policy.reference_context():
        lm = policy.reference_lm_module()
        hidden = response_hidden(lm, batch.input_ids, batch.attention_mask, batch.positions)
        logp = torch.log_softmax(response_logits(lm, hidden, batch.temperature), dim=-1)
    return logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)


def count_decoder_tokens(policy: Any) -> list[int]:
    counted: list[int] = []
    decoder_of(policy.module.lm).register_forward_pre_hook(
        lambda _module, _args, kwargs: counted.append(int(kwargs["input_ids"].numel())), with_kwargs=True
    )
    return counted


def test_reference_prefixes_are_computed_once_and_score_exactly(policy: Any) -> None:
    turns = turns_of_one_persona()
    longer, shorter = collate(turns[:2], pad_id=0), collate(turns[2:], pad_id=0)
    counted = count_decoder_tokens(policy)
    first = policy.score(longer, reference_is_policy=False)
    # policy: prefix 70 + 2 suffixes; reference: the same, its 70-token prefix now kept
    assert counted == [70, 2 * (longer.input_ids.shape[1] - 70)] * 2
    counted.clear()
    again = policy.score(longer, reference_is_policy=False)
    assert counted == [70, 2 * (longer.input_ids.shape[1] - 70), 2 * (longer.input_ids.shape[1] - 70)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    counted.clear()
    # A batch sharing only the 60-token persona prefix slices the kept 70-token one.
    sliced = policy.score(shorter, reference_is_policy=False)
    assert counted == [60, 2 * (shorter.input_ids.shape[1] - 60), 2 * (shorter.input_ids.shape[1] - 60)]
    assert policy.reference_prefixes.hits == 2 and policy.reference_prefixes.misses == 1
    for batch, scored in ((longer, again), (shorter, sliced)):
        mask = batch.mask.bool()
        reference = uncached_reference_logprobs(policy, batch)
        torch.testing.assert_close(scored[1][mask], reference[mask], atol=2e-5, rtol=1e-4)
        assert not torch.allclose(scored[0][mask], scored[1][mask], atol=1e-3)  # the policy's own prefix
        full = policy.full_logits(batch, reference=True)
        logp = torch.log_softmax(full / batch.temperature.view(-1, 1, 1), dim=-1)
        picked = logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(picked[mask], reference[mask], atol=2e-5, rtol=1e-4)


def test_merging_the_adapter_forgets_the_reference_prefixes(policy: Any) -> None:
    policy.score(collate(turns_of_one_persona()[:2], pad_id=0), reference_is_policy=False)
    assert len(policy.reference_prefixes) == 1
    policy.merged_lm()
    assert len(policy.reference_prefixes) == 0


def test_entropy_is_only_differentiated_when_it_is_trained(policy: Any) -> None:
    batch = collate(turns_of_one_persona(), pad_id=0)
    logprobs, values, monitored = policy.module(*batch_inputs(batch), entropy_grad=False)
    _, _, trained = policy.module(*batch_inputs(batch))
    assert logprobs.grad_fn is not None and values.grad_fn is not None
    assert monitored.grad_fn is None and trained.grad_fn is not None
    torch.testing.assert_close(monitored, trained.detach(), atol=0, rtol=0)
