"""Each rejected sample ended where it first contradicts its card (``npcrl.train.contradiction_tokens``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from playlog_helpers import rewritten_logs
from tiny_tokenizer import train_byte_level_bpe
from toy_logs import toy_inputs
from training_turns import line_turn

from npcrl.agent.consistency import card_contradictions, contradiction_spans
from npcrl.agent.persona import builtin_personas
from npcrl.errors import TrainConfigError
from npcrl.train.config import TrainConfig
from npcrl.train.contradiction_tokens import contradiction_token_count, cut_rejected_to_contradiction
from npcrl.train.data import TrainingTurn

BROM = builtin_personas()["blacksmith"]
WRONG = "Aye, well met. I'm Grimbold, and I have a quest for you: the old mill needs a new wheel."
CORPUS = [WRONG, "Aye, the forge is hot. What brings you here?", '"I am Hedda," she said. My bakery is in Oakvale.']
TOKENIZER = train_byte_level_bpe(CORPUS * 20, 300)


def encode(text: str) -> list[int]:
    return list(TOKENIZER.encode(text).ids)


def decode(ids: Any) -> str:
    return TOKENIZER.decode(list(ids), skip_special_tokens=True)


def test_spans_point_at_each_claim_in_text_order_past_quoted_speech() -> None:
    text = '"I am Hedda," she said. Aye, I\'m Grimbold. My bakery is in Oakvale.'
    found = contradiction_spans(text, BROM)
    assert [(c.reason, text[c.start : c.end]) for c in found] == [
        ("name:Grimbold", "Grimbold"),
        ("trade:baker", "bakery"),
    ]
    assert card_contradictions(text, BROM) == ["name:Grimbold", "trade:baker"]  # the quoted Hedda is no claim
    assert contradiction_spans("Aye, the forge is hot.", BROM) == []


def _rejected(ids: list[int], persona_hash: str = BROM.persona_hash, rejected: int = 1) -> TrainingTurn:
    return line_turn(ids, "" if rejected else "Aye.", rejected, persona_hash=persona_hash, reward=-1.0)


def test_a_rejected_sample_ends_at_the_wrong_name_and_keeps_its_log_probs() -> None:
    ids = encode(WRONG)
    count = contradiction_token_count(ids, BROM, decode)
    assert count is not None and count < len(ids)
    assert decode(ids[:count]).endswith("Grimbold") and "Grimbol" not in decode(ids[: count - 1])
    wrong, shown, unknown_card = _rejected(ids), _rejected(ids, rejected=0), _rejected(ids, persona_hash="other")
    agrees = _rejected(encode("Aye, the forge is hot. What brings you here?"))
    out, summary = cut_rejected_to_contradiction(
        [wrong, shown, unknown_card, agrees], decode, {BROM.persona_hash: BROM}
    )
    assert out[0].response_ids == tuple(ids[:count])
    assert out[0].behaviour_logprobs == wrong.behaviour_logprobs[:count]
    assert out[0].full_logprobs == wrong.full_logprobs[:count]
    assert out[1:] == [shown, unknown_card, agrees]  # a shown line, an unknown card, nothing found: whole
    assert (summary.rejected, summary.cut, summary.not_located) == (3, 1, 2)
    assert summary.tokens_before - summary.tokens_after == len(ids) - count


def test_the_config_names_a_wrong_value_and_the_mode_it_needs() -> None:
    assert TrainConfig().data.rejected_tokens == "sampled"
    with pytest.raises(TrainConfigError, match="data.rejected_tokens"):
        TrainConfig.from_dict({"data": {"rejected_tokens": "contradiction"}})
    with pytest.raises(TrainConfigError, match="data.rejected_tokens"):
        TrainConfig.from_dict({"data": {"mode": "reward_model", "rejected_tokens": "to_contradiction"}})
    with pytest.raises(TrainConfigError, match="data.rejected_tokens"):  # no rejected samples to cut
        TrainConfig.from_dict({"data": {"penalize_card_contradictions": False, "rejected_tokens": "to_contradiction"}})


def test_npcrl_train_ends_the_logged_rejected_samples_at_their_contradiction(
    tiny_bundles: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from npcrl.playlog import ConversationStart, NpcTurn
    from npcrl.runtime.bundle import load_bundle
    from npcrl.runtime.tokenizer import BundleTokenizer
    from npcrl.train.run import _load_data

    toy = toy_inputs(tiny_bundles["llama-fp32"], tmp_path, conversations=20)
    bundle = load_bundle(toy["bundle"])
    tokenizer = BundleTokenizer.from_bundle(bundle)
    wrong = tokenizer.encode(WRONG)

    def rejected_first(record: Any) -> Any:  # Brom's card, and each turn shown after a rejected sample
        if isinstance(record, ConversationStart):
            record = dataclasses.replace(record, persona_hash=BROM.persona_hash)
        if isinstance(record, NpcTurn):
            sample = {"response_ids": wrong, "logprobs": [-1.0] * len(wrong), "full_logprobs": [-1.0] * len(wrong)}
            sample |= {"sampler": record.sampler, "reason": "contradicts_card:name:Grimbold"}
            record = dataclasses.replace(record, filter_reason="resampled:contradicts_card:name:Grimbold")
            record.rejected_samples = [sample]
        return record

    logs = rewritten_logs(toy["logs"], tmp_path / "rejected-logs", rejected_first)

    def loaded(rejected_tokens: str) -> Any:
        config = TrainConfig.from_dict({"data": {"reward_spec": str(toy["spec"]), "rejected_tokens": rejected_tokens}})
        return _load_data(logs, bundle, config)[0]

    whole, cut = loaded("sampled"), loaded("to_contradiction")
    assert whole.report.rejected_tokens is None
    assert cut.report.rejected_tokens["cut"] == cut.report.train_rejected_samples > 10
    for before, after in zip([*whole.train, *whole.holdout], [*cut.train, *cut.holdout], strict=True):
        if before.rejected_sample:
            assert tokenizer.decode(after.response_ids).endswith("Grimbold")
            assert after.response_ids == before.response_ids[: len(after.response_ids)]
        else:
            assert after == before
    assert cut.fingerprint() != whole.fingerprint()  # a resumed run refuses the other cut
