"""Each logged line cut to the tokens its player was shown (``npcrl.train.shown_tokens``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from playlog_helpers import rewritten_logs
from tiny_tokenizer import train_byte_level_bpe
from toy_logs import toy_inputs
from training_turns import line_turn

from npcrl.errors import TrainConfigError
from npcrl.train.config import TrainConfig
from npcrl.train.shown_tokens import cut_to_shown, shown_token_count

CORPUS = [
    "Aye, the forge is hot. What brings you here? I was just about to close the shop for the night.",
    'Brom: "Welcome, traveller." Player: Thanks. Got any work?',
    "Two copper for a horseshoe, and not a coin less.",
]
TOKENIZER = train_byte_level_bpe(CORPUS * 20, 300)
EOS = TOKENIZER.token_to_id("<|im_end|>")


def encode(text: str) -> list[int]:
    return list(TOKENIZER.encode(text).ids)


def decode(ids: Any) -> str:
    return TOKENIZER.decode(list(ids), skip_special_tokens=True)


def test_a_line_ends_at_the_last_token_its_shown_text_needs() -> None:
    ids = encode(CORPUS[0])
    count = shown_token_count(ids, "Aye, the forge is hot. What brings you here?", decode)
    assert count is not None and count < len(ids)
    assert decode(ids[:count]).endswith("here?")  # the unfinished tail is gone, the question kept
    assert not decode(ids[: count - 1]).endswith("?")  # and nothing the player saw


def test_labels_quotes_and_another_speakers_turn_cleaned_away() -> None:
    ids = encode(CORPUS[1])
    count = shown_token_count(ids, "Welcome, traveller.", decode)  # label, quotes and the player's turn cut
    assert count is not None and decode(ids[:count]).rstrip('"').endswith("Welcome, traveller.")


def test_a_whole_line_keeps_its_end_token_and_an_ellipsis_is_not_compared() -> None:
    ids = [*encode(CORPUS[2]), EOS]
    assert shown_token_count(ids, CORPUS[2], decode) == len(ids)  # stopping there is part of what was seen
    cut = encode("Two copper for a horseshoe and not a coin less")
    count = shown_token_count(cut, "Two copper for a…", decode)
    assert count is not None and decode(cut[:count]).endswith(" a")


def test_text_not_in_the_sample_or_empty_is_not_found() -> None:
    ids = encode(CORPUS[0])
    assert shown_token_count(ids, "Greetings, stranger.", decode) is None  # a fallback line
    assert shown_token_count(ids, "", decode) is None


def test_turns_and_rejected_samples_are_cut_with_their_log_probs() -> None:
    ids = encode("Aye, the forge is hot. What brings you here? I was just about to close the")
    shown = line_turn(ids, "Aye, the forge is hot. What brings you here?")
    rejected = line_turn(ids, "", rejected=1)  # no text logged: cleaned from its decoding as the agent would
    fallback = line_turn(ids, "Greetings, stranger.")
    out, summary = cut_to_shown([shown, rejected, fallback], decode, {"blacksmith": "Brom"})
    count = shown_token_count(ids, shown.text, decode)
    assert count is not None
    for turn in out[:2]:
        assert turn.response_ids == tuple(ids[:count])
        assert turn.behaviour_logprobs == shown.behaviour_logprobs[:count]
        assert turn.full_logprobs == shown.full_logprobs[:count]
    assert out[2] == fallback
    assert (summary.turns, summary.cut, summary.not_found) == (3, 2, 1)
    assert (summary.tokens_before, summary.tokens_after) == (3 * len(ids), 2 * count + len(ids))


def test_the_config_names_a_wrong_value() -> None:
    with pytest.raises(TrainConfigError, match="data.train_tokens"):
        TrainConfig.from_dict({"data": {"train_tokens": "seen"}})
    assert TrainConfig().data.train_tokens == "sampled"


@pytest.mark.parametrize("loader", ["npcrl.train.run", "npcrl.train.reward_model_train"])
def test_the_logged_run_and_the_reward_model_train_on_what_was_shown(
    tiny_bundles: dict[str, Path], tmp_path: Path, loader: str
) -> None:
    pytest.importorskip("torch")
    import importlib

    from npcrl.playlog import NpcTurn
    from npcrl.runtime.bundle import load_bundle
    from npcrl.runtime.tokenizer import BundleTokenizer

    load_data = importlib.import_module(loader)._load_data

    toy = toy_inputs(tiny_bundles["llama-fp32"], tmp_path, conversations=20)
    bundle = load_bundle(toy["bundle"])
    tokenizer = BundleTokenizer.from_bundle(bundle)
    halves: dict[str, int] = {}

    def shown_half(record: Any) -> Any:  # each line shown only up to its first half
        if isinstance(record, NpcTurn) and len(record.response_ids) >= 4:
            half = len(record.response_ids) // 2
            record = dataclasses.replace(record, text=tokenizer.decode(record.response_ids[:half]))
            halves[record.conversation_id] = half
        return record

    logs = rewritten_logs(toy["logs"], tmp_path / "shown-logs", shown_half)

    def loaded(train_tokens: str) -> Any:
        config = TrainConfig.from_dict({"data": {"reward_spec": str(toy["spec"]), "train_tokens": train_tokens}})
        data = load_data(logs, bundle, config)
        return data[0] if isinstance(data, tuple) else data  # the trainer's also gives the lineage

    sampled, shown = loaded("sampled"), loaded("shown")
    assert shown.report.shown_tokens["cut"] >= len(halves) // 2 and sampled.report.shown_tokens is None
    for whole, cut in zip([*sampled.train, *sampled.holdout], [*shown.train, *shown.holdout], strict=True):
        assert cut.response_ids == whole.response_ids[: len(cut.response_ids)]
        if whole.conversation_id in halves:
            assert len(cut.response_ids) <= halves[whole.conversation_id]
