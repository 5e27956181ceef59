"""Batched on-policy sampling (``npcrl.train.sampling``): the rows decoded together, sharing their
prompt prefix, answer exactly what each prompt answers alone and what HF generate answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from npcrl.runtime.bundle import load_bundle  # noqa: E402
from npcrl.runtime.sampler import SamplerConfig  # noqa: E402
from npcrl.train.config import ModelConfig  # noqa: E402
from npcrl.train.policy import build_policy, decoder_of, lm_head_of, resolve_base_weights  # noqa: E402
from npcrl.train.sampling import common_prefix_length, sample_responses  # noqa: E402
from npcrl.train.shared_prefix import MIN_SHARED_PREFIX  # noqa: E402

VOCAB = 60


@pytest.fixture(scope="module", params=["llama-fp32", "gpt2-fp32"])
def policy(request: pytest.FixtureRequest, tiny_bundles: dict[str, Path]) -> Any:
    torch.set_num_threads(1)
    bundle = load_bundle(tiny_bundles[request.param])
    targets = ["c_attn", "c_proj"] if request.param.startswith("gpt2") else ["q_proj", "k_proj", "v_proj", "o_proj"]
    built = build_policy(
        resolve_base_weights(bundle, None), ModelConfig(mode="lora", lora_r=4, lora_target_modules=targets), 0
    )
    with torch.no_grad():  # non-zero adapters: sampling must go through them
        for name, param in built.module.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return built


def persona_prompts(seed: int = 0) -> list[list[int]]:
    """Four prompts sharing a 50-token prefix, with suffixes of different lengths."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    prefix = ids(50)
    return [prefix + ids(n) for n in (7, 1, 20, 12)]


def cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """``ids`` up to and including the first EOS token (HF generate pads after it)."""
    for k, token in enumerate(ids):
        if token in eos_ids:
            return ids[: k + 1]
    return ids


def run(
    policy: Any, prompts: list[list[int]], samplers: list[SamplerConfig], limits: list[int], eos: tuple[int, ...] = ()
):
    lm = policy.module.lm
    return sample_responses(decoder_of(lm), lm_head_of(lm), prompts, samplers, limits, eos, pad_id=0)


def test_common_prefix_length() -> None:
    a = [5] * 40 + [1, 2]
    assert common_prefix_length([a, [5] * 40 + [3]]) == 40
    assert common_prefix_length([a, a]) == 41  # each row keeps a token of its own to predict from
    assert common_prefix_length([a]) == 0
    assert common_prefix_length([a, [5] * (MIN_SHARED_PREFIX - 1) + [7] * 10]) == 0
    assert common_prefix_length([a, [5] * 40, [5] * 35 + [1]]) == 35


def test_greedy_rows_equal_hf_generate_one_prompt_at_a_time(policy: Any) -> None:
    prompts = persona_prompts()
    limits = [9, 4, 12, 1]
    greedy = SamplerConfig(temperature=0.0)
    eos = prompts[0][-1]  # some token the rows may well produce
    batched = run(policy, prompts, [greedy] * 4, limits, (eos,))
    for prompt, limit, got in zip(prompts, limits, batched, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = policy.module.lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=limit,
                eos_token_id=eos,
                pad_token_id=0,
            )
        assert got == cut_at_eos(out[0, len(prompt) :].tolist(), [eos])
        assert 1 <= len(got) <= limit


def test_a_rows_line_does_not_depend_on_its_batch(policy: Any) -> None:
    prompts = persona_prompts(seed=1)
    samplers = [SamplerConfig(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=s) for s in range(4)]
    limits = [10, 10, 6, 10]
    together = run(policy, prompts, samplers, limits)
    alone = [run(policy, [p], [s], [n])[0] for p, s, n in zip(prompts, samplers, limits, strict=True)]
    assert together == alone
    reordered = run(policy, prompts[::-1], samplers[::-1], limits[::-1])
    assert reordered[::-1] == together
    assert [len(line) for line in together] == limits  # no EOS given: every row runs to its limit
    reseeded = run(policy, prompts, [SamplerConfig(temperature=1.0, seed=s + 10) for s in range(4)], limits)
    assert reseeded != together


def test_eos_is_kept_and_ends_only_its_row(policy: Any) -> None:
    prompts = persona_prompts(seed=2)
    greedy = [SamplerConfig(temperature=0.0)] * 4
    free = run(policy, prompts, greedy, [8] * 4)
    eos = free[2][2]
    first = free[2].index(eos)
    stopped = run(policy, prompts, greedy, [8] * 4, (eos,))
    assert stopped[2] == free[2][: first + 1]
    for line, full in zip(stopped, free, strict=True):
        assert line == cut_at_eos(full, [eos])


def test_bad_arguments_are_named(policy: Any) -> None:
    with pytest.raises(ValueError, match="3 sampler configs"):
        run(policy, persona_prompts()[:2], [SamplerConfig()] * 3, [4, 4])
    with pytest.raises(ValueError, match="at least one token"):
        run(policy, [[]], [SamplerConfig()], [4])
    assert run(policy, [], [], []) == []
