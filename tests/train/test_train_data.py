"""The trainer's data stage and config: what reaches training, what is dropped and why, and errors."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from config_helpers import train_config_error, write_train_config

from npcrl.errors import TrainDataError
from npcrl.playlog import ConversationEnd, ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter
from npcrl.reward.spec import default_reward_spec
from npcrl.train.config import DataConfig, TrainConfig, load_train_config
from npcrl.train.data import load_training_data, split_conversations

SAMPLER = {"temperature": 0.7, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 8}


def turn(cid: str, index: int = 0, bundle: str = "b1", **overrides: object) -> NpcTurn:
    fields: dict[str, object] = {
        "conversation_id": cid,
        "turn_index": index,
        "npc_id": "brom",
        "bundle_id": bundle,
        "player_text": "hi",
        "prompt_ids": [1, 2, 3],
        "response_ids": [4, 5],
        "logprobs": [-0.5, -0.25],
        "full_logprobs": [-0.75, -0.5],
        "text": "ok",
        "stop_reason": "eos",
        "sampler": dict(SAMPLER),
        "latency_s": 0.1,
        "time_to_first_token_s": 0.01,
        "filtered": False,
        "fallback": False,
        "time": time.time(),
    }
    fields.update(overrides)
    return NpcTurn(**fields)  # type: ignore[arg-type]


def write(log_dir: Path, records: list[object]) -> None:
    with PlayLogWriter(log_dir) as writer:
        for record in records:
            writer.append(record)  # type: ignore[arg-type]


def conversation(cid: str, *turns: NpcTurn, rating: float | None = 1.0) -> list[object]:
    now = time.time()
    out: list[object] = [ConversationStart(cid, "brom", "p", "Brom", "h", "b1", dict(SAMPLER), now)]
    for t in turns:
        out.append(t)
        if rating is not None:
            out.append(EngagementEvent(cid, t.turn_index, "rating", rating, now + 1))
    out.append(ConversationEnd(cid, "bye", now + 2))
    return out


def load(log_dir: Path, config: DataConfig | None = None, vocab: int = 100):
    return load_training_data(log_dir, default_reward_spec(), {"b1"}, vocab, config or DataConfig(), seed=0)


def test_usable_turns_carry_ids_logprobs_and_spec_reward(tmp_path: Path) -> None:
    write(tmp_path, conversation("c1", turn("c1")) + conversation("c2", turn("c2"), rating=-1.0))
    data = load(tmp_path, DataConfig(holdout_fraction=0.0))
    by_id = {t.conversation_id: t for t in data.train}
    assert by_id["c1"].prompt_ids == (1, 2, 3) and by_id["c1"].response_ids == (4, 5)
    assert by_id["c1"].behaviour_logprobs == (-0.5, -0.25) and by_id["c1"].temperature == 0.7
    # default spec: rating weight 0.5, value-scaled
    assert by_id["c1"].reward == pytest.approx(0.5) and by_id["c2"].reward == pytest.approx(-0.5)
    assert data.report.train_turns == 2 and sum(data.report.dropped.values()) == 0


def test_each_kind_of_unusable_turn_is_dropped_and_counted(tmp_path: Path) -> None:
    records = conversation(
        "c1",
        turn("c1", 0),
        turn("c1", 1, filtered=True),
        turn("c1", 2, fallback=True),
        turn("c1", 3, bundle="other"),
        turn("c1", 4, sampler={**SAMPLER, "temperature": 0.0}),
        turn("c1", 5, response_ids=[], logprobs=[], full_logprobs=[]),
        turn("c1", 6, prompt_ids=list(range(50))),
        turn("c1", 7, response_ids=[4, 500]),
        turn("c1", 8, logprobs=[-0.5, float("-inf")]),
        turn("c1", 9, filter_reason="resampled:contradicts_card:name:Grimbold"),
    )
    write(tmp_path, records)
    data = load(tmp_path, DataConfig(holdout_fraction=0.0, max_sequence_tokens=20))
    assert [t.turn_index for t in data.train] == [0]
    assert data.report.dropped == {
        "conflicting_records": 0,
        "unscorable_events": 0,
        "filtered_or_fallback": 2,
        "resampled": 1,
        "other_tokenizer": 1,
        "greedy": 1,
        "too_short": 1,
        "too_long": 1,
        "invalid": 2,
    }
    assert data.report.turns_logged == 10


def rejected(ids: list[int], seed: int, **overrides: object) -> dict[str, object]:
    sample: dict[str, object] = {
        "response_ids": ids,
        "logprobs": [-1.5] * len(ids),
        "full_logprobs": [-1.75] * len(ids),
        "sampler": {**SAMPLER, "seed": seed},
        "reason": "contradicts_card:name:Grimbold",
    }
    sample.update(overrides)
    return sample


def test_rejected_samples_train_as_contradictions_and_keep_the_resampled_turn(tmp_path: Path) -> None:
    resampled = turn(
        "c1", 0, filter_reason="resampled:contradicts_card:name:Grimbold", rejected_samples=[rejected([6, 7], 1)]
    )
    # every sample contradicted: the player saw a fallback, the samples still teach
    fell_back = turn(
        "c1",
        1,
        fallback=True,
        filter_reason="contradicts_card:name:Grimbold",
        rejected_samples=[
            rejected([8], 1),
            rejected([9, 9, 9], 2),
            rejected([4, 500], 3),
            rejected([4], 4, sampler={}),
        ],
    )
    write(tmp_path, conversation("c1", resampled, fell_back))
    data = load_training_data(
        tmp_path, default_reward_spec(), {"b1"}, 100, DataConfig(holdout_fraction=0.0), seed=0, with_rejected=True
    )
    by_key = {t.key: t for t in data.train}
    assert list(by_key) == ["c1#0", "c1#0/rejected-1", "c1#1/rejected-1", "c1#1/rejected-2"]
    shown, first = by_key["c1#0"], by_key["c1#0/rejected-1"]
    assert shown.response_ids == (4, 5) and shown.reward == pytest.approx(0.5 + 0.5 * 0.5)  # its rating, half the next
    assert first.response_ids == (6, 7) and first.prompt_ids == shown.prompt_ids
    assert first.behaviour_logprobs == (-1.5, -1.5) and first.full_logprobs == (-1.75, -1.75)
    assert first.sampler["seed"] == 1 and first.rejected_sample == 1
    assert all(t.reward == -1.0 for key, t in by_key.items() if "rejected" in key)  # the spec's contradiction_reward
    report = data.report
    assert (report.train_turns, report.train_rejected_samples, report.rejected_samples_logged) == (1, 3, 5)
    assert report.rejected_samples_dropped == {"invalid": 1, "greedy": 1}
    assert report.train_reward_mean == pytest.approx(0.75)  # of the shown turns only
    assert "5 rejected (card-contradicting) samples logged, 3 trained on" in report.summary()
    # left out by default (the reward-model paths), and then the resampled turn with them
    with pytest.raises(TrainDataError, match="resampled 1; .* 5 rejected .* 0 trained on"):
        load(tmp_path, DataConfig(holdout_fraction=0.0))


def test_holdout_is_split_by_conversation(tmp_path: Path) -> None:
    records: list[object] = []
    for k in range(20):
        records += conversation(f"c{k:02d}", turn(f"c{k:02d}", 0), turn(f"c{k:02d}", 1))
    write(tmp_path, records)
    data = load(tmp_path, DataConfig(holdout_fraction=0.25))
    train_ids = {t.conversation_id for t in data.train}
    holdout_ids = {t.conversation_id for t in data.holdout}
    assert not train_ids & holdout_ids
    assert len(holdout_ids) == 5 and len(train_ids) == 15
    assert data.report.holdout_turns == 10
    # stable: the same seed picks the same conversations, a new conversation does not reshuffle them
    ids = [f"c{k:02d}" for k in range(20)]
    assert split_conversations(ids, 0.25, 0) == holdout_ids
    assert split_conversations(ids, 0.25, 1) != holdout_ids


def test_corrupt_records_are_skipped_and_reported(tmp_path: Path) -> None:
    write(tmp_path, conversation("c1", turn("c1")) + conversation("c2", turn("c2")))
    (path,) = tmp_path.glob("*.npl")
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    data = load(tmp_path, DataConfig(holdout_fraction=0.0))
    assert data.report.corrupt_records_skipped >= 1
    assert 1 <= len(data.train) <= 2


def test_empty_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainDataError, match="no play-log files"):
        load(tmp_path)
    with pytest.raises(TrainDataError, match="does not exist"):
        load(tmp_path / "missing")


def test_several_directories_are_pooled_and_may_not_share_a_conversation(tmp_path: Path) -> None:
    first, second = tmp_path / "round-1", tmp_path / "round-2"
    write(first, conversation("c1", turn("c1")) + conversation("c2", turn("c2")))
    write(second, conversation("c3", turn("c3"), rating=-1.0))
    data = load_training_data([first, second], default_reward_spec(), {"b1"}, 100, DataConfig(holdout_fraction=0.0), 0)
    assert sorted(t.conversation_id for t in data.train) == ["c1", "c2", "c3"]
    assert data.report.conversations == 3 and len(data.report.log_files) == 2
    assert {Path(f["path"]).parent for f in data.report.log_files} == {first, second}
    write(second, conversation("c2", turn("c2")))  # the same conversation in both: records would merge
    with pytest.raises(TrainDataError, match=r"round-2: conversation c2 is also in .*round-1"):
        load_training_data([first, second], default_reward_spec(), {"b1"}, 100, DataConfig(), 0)
    with pytest.raises(TrainDataError, match="no play-log directory"):
        load_training_data([], default_reward_spec(), {"b1"}, 100, DataConfig(), 0)


def test_logs_without_usable_turns_say_why(tmp_path: Path) -> None:
    write(tmp_path, conversation("c1", turn("c1", filtered=True)))
    with pytest.raises(TrainDataError, match="filtered_or_fallback 1"):
        load(tmp_path)


def test_all_corrupt_log_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path, conversation("c1", turn("c1")))
    (path,) = tmp_path.glob("*.npl")
    raw = bytearray(path.read_bytes())
    header = 16
    raw[header:] = bytes(b ^ 0x5A for b in raw[header:])
    path.write_bytes(bytes(raw))
    with pytest.raises(TrainDataError, match="no usable training turns"):
        load(tmp_path)


# -- config -------------------------------------------------------------------------------------


def test_defaults_are_valid_and_round_trip() -> None:
    config = load_train_config(None)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[ppo]\nlearning_rat = 1e-4\n", r"ppo: unknown key\(s\) learning_rat"),
        ("[optimiser]\nlr = 1\n", r"unknown key\(s\) optimiser"),
        ("[ppo]\nepochs = 'two'\n", r"ppo.epochs = 'two': expected int"),
        ("[ppo]\nepochs = true\n", r"ppo.epochs = True: expected int"),
        ("[ppo]\nclip_eps = -0.1\n", r"ppo.clip_eps = -0.1: must be > 0"),
        ("[ppo]\nrollout_turns = 4\nminibatch_turns = 8\n", r"ppo.minibatch_turns = 8: must be <= ppo.rollout_turns"),
        ("[ppo]\nminibatch_turns = 8\nmicro_batch_turns = 3\n", r"ppo.micro_batch_turns = 3: must be a divisor"),
        ("[model]\nmode = 'qlora'\n", r"model.mode = 'qlora'"),
        ("[run]\nexport_quant = 'q2'\n", r"run.export_quant = 'q2'"),
        ("seed = -1\n", r"seed = -1"),
        ("[ppo\n", r"invalid TOML"),
    ],
    ids=[
        "typo",
        "unknown-section",
        "wrong-type",
        "bool-for-int",
        "range",
        "cross-field",
        "divisor",
        "mode",
        "quant",
        "seed",
        "syntax",
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    train_config_error(tmp_path, text, message)


def test_config_file_values_are_used(tmp_path: Path) -> None:
    config = load_train_config(
        write_train_config(
            tmp_path, "seed = 7\n[ppo]\nkl_target = 0.5\nlearning_rate = 1e-4\n[data]\nreward_spec = 'x.toml'\n"
        )
    )
    assert config.seed == 7 and config.ppo.kl_target == 0.5 and config.ppo.learning_rate == 1e-4
    assert config.data.reward_spec == "x.toml"


def test_example_config_is_the_defaults_and_every_key_is_documented() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_train_config(root / "docs" / "train.example.toml") == load_train_config(None)
    guide = (root / "docs" / "TRAINING.md").read_text(encoding="utf-8")
    for section, values in TrainConfig().to_dict().items():
        keys = [section] if not isinstance(values, dict) else [f"{section}.{key}" for key in values]
        missing = [key for key in keys if f"`{key}`" not in guide]
        assert not missing, f"docs/TRAINING.md does not document {missing}"


def test_the_fast_config_is_the_defaults_for_one_pass() -> None:
    """docs/train.fast.toml (measured in docs/TRAINING.md and docs/RESULTS.md) loads, and differs
    from the defaults only in how long it trains: one pass, without the KL stop."""
    root = Path(__file__).resolve().parents[2]
    fast = load_train_config(root / "docs" / "train.fast.toml").to_dict()
    assert changed_settings(fast, TrainConfig().to_dict()) == {
        "ppo.passes": 1.0,
        "ppo.kl_stop": None,
        "ppo.max_iterations_per_pass": 0,
        "contradiction.penalty": "fixed",
    }


def test_the_earlier_defaults_are_kept_as_a_config() -> None:
    """docs/train.two-epochs.toml holds the defaults the runs before the KL stop trained with."""
    root = Path(__file__).resolve().parents[2]
    earlier = load_train_config(root / "docs" / "train.two-epochs.toml").to_dict()
    assert changed_settings(earlier, TrainConfig().to_dict()) == {
        "model.precision": "fp32",
        "ppo.minibatch_order": "shuffled",
        "ppo.epochs": 2,
        "ppo.learning_rate": 5e-5,
        "ppo.passes": 1.0,
        "ppo.kl_stop": None,
        "ppo.max_iterations_per_pass": 0,
        "contradiction.penalty": "fixed",
    }


def test_the_two_epoch_kl_config_is_the_earlier_update_with_the_kl_stop() -> None:
    """docs/train.two-epochs-kl.toml (measured in docs/RESULTS.md) differs from the defaults only in
    the update: two shuffled epochs at 5e-5, the earlier defaults'; it keeps the KL stop and passes."""
    root = Path(__file__).resolve().parents[2]
    hybrid = load_train_config(root / "docs" / "train.two-epochs-kl.toml").to_dict()
    assert changed_settings(hybrid, TrainConfig().to_dict()) == {
        "ppo.minibatch_order": "shuffled",
        "ppo.epochs": 2,
        "ppo.learning_rate": 5e-5,
        "contradiction.penalty": "fixed",
    }


def test_none_turns_an_optional_setting_off_and_only_an_optional_one(tmp_path: Path) -> None:
    """TOML has no null: ``"none"`` is how a file turns off a setting the defaults turn on."""
    assert TrainConfig().ppo.kl_budget is not None and TrainConfig().ppo.reward_clip is not None
    config = load_train_config(write_train_config(tmp_path, '[ppo]\nkl_budget = "none"\nreward_clip = "none"\n'))
    assert config.ppo.kl_budget is None and config.ppo.reward_clip is None
    config = load_train_config(write_train_config(tmp_path, '[ppo]\nkl_stop = "none"\n'))
    assert config.ppo.kl_stop is None and TrainConfig().ppo.kl_stop == 1.5
    train_config_error(tmp_path, '[ppo]\nepochs = "none"\n', r"ppo.epochs = 'none': expected int")
    train_config_error(tmp_path, '[ppo]\nkl_stop = "never"\n', r"ppo.kl_stop = 'never': expected")


def test_a_conversation_with_an_unscorable_event_is_dropped_not_fatal(tmp_path: Path) -> None:
    write(tmp_path, conversation("c1", turn("c1")) + conversation("c2", turn("c2"), rating=None))
    now = time.time()
    with PlayLogWriter(tmp_path) as writer:
        writer.append(EngagementEvent("c2", 0, "rating", None, now))  # value-scaled kind without a value
    data = load(tmp_path, DataConfig(holdout_fraction=0.0))
    assert [t.conversation_id for t in data.train] == ["c1"]
    assert data.report.dropped["unscorable_events"] == 1


def test_the_kl_stop_config_is_the_defaults_with_the_fixed_penalty() -> None:
    """docs/train.kl-stop.toml, the defaults before the adaptive penalty, differs from them only in
    that, so its recorded commands train as they did; docs/train.contradiction-adaptive.toml, which
    the adaptive penalty was measured with before it became the default, loads as the defaults."""
    root = Path(__file__).resolve().parents[2]
    kl_stop = load_train_config(root / "docs" / "train.kl-stop.toml").to_dict()
    assert changed_settings(kl_stop, TrainConfig().to_dict()) == {"contradiction.penalty": "fixed"}
    assert load_train_config(root / "docs" / "train.contradiction-adaptive.toml") == load_train_config(None)
    ppo = load_train_config(None).ppo
    assert ppo.batch_scale(1024) == 1 and ppo.batch_scale(1025) == 2


def changed_settings(config: dict[str, Any], against: dict[str, Any]) -> dict[str, Any]:
    """``section.key`` -> value of each setting in ``config`` (a ``to_dict()``) that differs from ``against``."""
    return {
        f"{section}.{key}": value
        for section, values in config.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if value != against[section][key]
    }


def test_loaded_turns_carry_their_players_pseudonym(tmp_path: Path) -> None:
    records: list[Any] = []
    for cid, player in (("c1", "ann"), ("c2", "ann"), ("c3", "bob")):
        convo = conversation(cid, turn(cid))
        start = convo[0]
        assert isinstance(start, ConversationStart)
        convo[0] = dataclasses.replace(start, player_id=player)
        records += convo
    write(tmp_path, records)
    data = load(tmp_path, DataConfig(holdout_fraction=0.0))
    players = {t.conversation_id: t.player_id for t in data.train}
    assert players["c1"] == players["c2"] != players["c3"]
    assert "ann" not in players.values() and all(players.values())  # pseudonyms, never the raw id
