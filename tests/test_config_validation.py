"""Config numbers are finite and in their documented range, and hostile TOML fails with the
project's own error naming the file: reward specs, training configs, persona cards, player
profiles, and the sampler, agent and session option dataclasses."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from npcrl.agent.npc_agent import AgentConfig
from npcrl.agent.persona import load_persona
from npcrl.errors import NpcrlError, PersonaError, RewardSpecError, TrainConfigError
from npcrl.reward.engagement import ConversationLog, score_conversation
from npcrl.reward.spec import EventRule, RewardSpec, TurnOutcome, conversation_rewards, load_reward_spec
from npcrl.runtime.model import SessionOptions
from npcrl.runtime.sampler import SamplerConfig
from npcrl.sim.profiles import PlayerProfileError, load_profile
from npcrl.train.config import SECTION_CLASSES, TrainConfig, load_train_config
from npcrl.train.config_ranges import RANGES
from npcrl.validate import ConfigValueError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- hostile TOML, for every kind of file ------------------------------------------------------

CARD = (REPO / "npcrl" / "data" / "personas" / "miller.toml").read_text(encoding="utf-8")
PROFILE = (REPO / "npcrl" / "data" / "players" / "curious.toml").read_text(encoding="utf-8")
SPEC = "[rules.reply]\nweight = 0.3\n"
LOADERS = {
    "persona": (load_persona, PersonaError, CARD),
    "reward-spec": (load_reward_spec, RewardSpecError, SPEC),
    "train-config": (load_train_config, TrainConfigError, ""),
    "player-profile": (load_profile, PlayerProfileError, PROFILE),
}
HOSTILE = {
    "arrays-3000-deep": "deep = " + "[" * 3000 + "]" * 3000 + "\n",
    "inline-tables-3000-deep": "deep = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
    "dotted-keys-3000-deep": "deep" + ".a" * 3000 + " = 1\n",
    "arrays-20-deep": "deep = " + "[" * 20 + "]" * 20 + "\n",
    "5000-digit-integer": "deep = " + "9" * 5000 + "\n",
    "2-MiB-file": "# " + "x" * (2 << 20) + "\n",
}


@pytest.mark.parametrize("kind", list(LOADERS))
@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_hostile_toml_is_the_projects_error_naming_the_file(tmp_path: Path, kind: str, hostile: str) -> None:
    load, error, valid = LOADERS[kind]
    path = write(tmp_path, "hostile.toml", valid + HOSTILE[hostile])
    with pytest.raises(error) as info:
        load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", list(LOADERS))
def test_the_valid_base_documents_load(tmp_path: Path, kind: str) -> None:
    load, _, valid = LOADERS[kind]
    load(write(tmp_path, "fine.toml", valid))


# --- reward specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("weight = 1e308", "rules.reply.weight"),
        ("weight = -1e308", "rules.reply.weight"),
        ("weight = nan", "rules.reply.weight"),
        ("weight = inf", "rules.reply.weight"),
        ("weight = 1_000_001", "rules.reply.weight"),
        ("weight = true", "rules.reply.weight"),
    ],
)
def test_reward_weight_out_of_range_is_refused(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path, "spec.toml", f"[rules.reply]\n{line}\n")
    with pytest.raises(RewardSpecError, match=re.escape(f"{path}: field '{key}'")) as info:
        load_reward_spec(path)
    assert line.split(" = ")[1].replace("_", "")[:3].lower() in str(info.value).lower().replace("+", "")


@pytest.mark.parametrize("top", ["turn_max = 1e300", "turn_min = -1e300", "discount = nan", "discount = true"])
def test_reward_spec_top_level_numbers_are_bounded(tmp_path: Path, top: str) -> None:
    path = write(tmp_path, "spec.toml", f"{top}\n{SPEC}")
    with pytest.raises(RewardSpecError, match=re.escape(f"'{top.split(' = ')[0]}'")):
        load_reward_spec(path)


def test_a_reward_that_would_overflow_raises_naming_the_spec_and_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "spec.toml", "discount = 1.0\n[rules.tip]\nweight = 2.0\nvalue_scale = true\n")
    spec = load_reward_spec(path)
    # Each event is a finite number; their credit is not: +inf on one turn, -inf on the other,
    # which the discounted sum would have turned into a NaN reward.
    turns = [TurnOutcome(0, False, (("tip", -1e308),)), TurnOutcome(1, False, (("tip", 1e308),))]
    with pytest.raises(RewardSpecError, match=re.escape(str(path)) + r".*'tip'"):
        conversation_rewards(turns, spec)
    with pytest.raises(RewardSpecError, match="'tip'"):
        conversation_rewards([TurnOutcome(0, False, (("tip", 1e308), ("tip", 1e308)))], spec)


def test_an_overflowing_reward_never_reaches_a_trainable_turn() -> None:
    spec = RewardSpec(rules={"tip": EventRule(2.0, value_scale=True)}, discount=1.0)
    log = ConversationLog("c1")
    # Only the fields scoring reads: the record classes' own tests cover the rest.
    for i in range(2):
        log.turns[i] = SimpleNamespace(filtered=False, fallback=False, npc_id="smith", bundle_id="b1")  # type: ignore[assignment]
        event = SimpleNamespace(turn_index=i, time=i + 0.5, kind="tip", value=1e308 if i else -1e308)
        log.events.append(event)  # type: ignore[arg-type]
    with pytest.raises(RewardSpecError, match="'tip'"):
        score_conversation(log, spec)


# --- training configs --------------------------------------------------------------------------


def config_text(key: str, value: str) -> str:
    if "." not in key:
        return f"{key} = {value}\n"
    section, name = key.split(".")
    return f"[{section}]\n{name} = {value}\n"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e308", "true", "10000000000000000000000000000000000000000"])
@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_numeric_train_key_refuses_non_finite_huge_and_bool(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, "train.toml", config_text(key, value))
    with pytest.raises(TrainConfigError) as info:
        load_train_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"{key}" in message, message


@pytest.mark.parametrize("key", sorted(k for k, r in RANGES.items() if r.low > -1))
def test_negative_train_values_are_refused(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, "train.toml", config_text(key, "-1"))
    with pytest.raises(TrainConfigError, match=re.escape(f"{key} = -1: must be")):
        load_train_config(path)


def test_inf_learning_rate_names_file_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "train.toml", "[ppo]\nlearning_rate = inf\n")
    with pytest.raises(TrainConfigError, match=re.escape(f"{path}: ppo.learning_rate = inf: must be > 0 and <= 1")):
        load_train_config(path)


def test_every_numeric_config_field_has_a_documented_range() -> None:
    numeric = {"seed"}
    for name, cls in SECTION_CLASSES.items():
        for field in dataclasses.fields(cls):
            annotation = str(field.type)
            if annotation.startswith(("int", "float")):
                numeric.add(f"{name}.{field.name}")
    assert numeric == set(RANGES)
    guide = (REPO / "docs" / "TRAINING.md").read_text(encoding="utf-8")
    for key, rule in RANGES.items():
        assert f"| `{key}` | " in guide and f" | {rule.interval()} | " in guide.split(f"| `{key}` | ")[1].split("\n")[0]


def test_configs_built_in_code_are_held_to_the_same_ranges() -> None:
    config = TrainConfig()
    config.ppo.kl_coef = math.inf
    with pytest.raises(TrainConfigError, match="ppo.kl_coef = inf"):
        config.validate()
    config = TrainConfig()
    config.ppo.whiten_advantages = 1  # type: ignore[assignment]
    with pytest.raises(TrainConfigError, match="ppo.whiten_advantages = 1: must be true or false"):
        config.validate()
    config = TrainConfig()
    config.run.ope_log_weight_clip = 800.0  # exp(800) is inf
    with pytest.raises(TrainConfigError, match="run.ope_log_weight_clip"):
        config.validate()


def test_path_keys_refuse_nul_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "train.toml", '[data]\nreward_spec = "a\\u0000b"\n')
    with pytest.raises(TrainConfigError, match=re.escape(f"{path}: data.reward_spec")):
        load_train_config(path)


# --- player profiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bias", "1e308"),
        ("noise", "inf"),
        ("walk_away_below", "nan"),
        ("reply_latency_s", "1e308"),
        ("reply_latency_jitter_s", "-1"),
        ("rating_threshold", "true"),
        ("max_turns", "1" + "0" * 40),
        ("weights.asks_back", "1e308"),
        ("weights.empty", "1" + "0" * 400),
    ],
)
def test_profile_numbers_are_finite_and_bounded(tmp_path: Path, key: str, value: str) -> None:
    name = key.split(".")[-1]
    text = "\n".join(line for line in PROFILE.splitlines() if not line.startswith(f"{name} ="))
    text = text.replace("[weights]", f"[weights]\n{name} = {value}") if "." in key else f"{name} = {value}\n{text}"
    path = write(tmp_path, "player.toml", text + "\n")
    with pytest.raises(PlayerProfileError, match=re.escape(f"{path}: key '{key}': must be")):
        load_profile(path)


def test_profile_templates_take_no_format_spec(tmp_path: Path) -> None:
    text = PROFILE.replace('"Hi there! What\'s your story, {npc}?"', '"Hi {npc:>999999999}"')
    path = write(tmp_path, "player.toml", text)
    with pytest.raises(PlayerProfileError, match="format spec"):
        load_profile(path)


# --- sampler, agent and session options --------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SamplerConfig, {"temperature": 1e-300}),
        (SamplerConfig, {"temperature": 1e3}),
        (SamplerConfig, {"repetition_penalty": 1e300}),
        (SamplerConfig, {"repetition_penalty": 1e-300}),
        (SamplerConfig, {"max_new_tokens": 10**12}),
        (SamplerConfig, {"seed": 2**64}),
        (SamplerConfig, {"top_k": 10**12}),
        (AgentConfig, {"time_budget_s": math.inf}),
        (AgentConfig, {"time_budget_s": math.nan}),
        (AgentConfig, {"max_line_chars": True}),
        (AgentConfig, {"max_player_chars": -1}),
        (AgentConfig, {"prompt_token_budget": 10**12}),
        (AgentConfig, {"reuse_persona_prefix": "yes"}),
        (SessionOptions, {"gather_ms": math.nan}),
        (SessionOptions, {"prefix_cache_mb": math.inf}),
        (SessionOptions, {"prefix_cache_mb": -1.0}),
        (SessionOptions, {"kv_slots": 0}),
        (SessionOptions, {"kv_slots": True}),
        (SessionOptions, {"kv_capacity": 2.5}),
        (SessionOptions, {"intra_op_threads": -1}),
        (SessionOptions, {"prefill_chunk": 10**12}),
        (SessionOptions, {"batch_decode": 1}),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else repr(v),
)
def test_option_dataclasses_refuse_bad_numbers_naming_the_field(cls: type, kwargs: dict) -> None:
    ((key, value),) = kwargs.items()
    with pytest.raises(ConfigValueError, match=re.escape(f"{key} = {value!r}: must be")) as info:
        cls(**kwargs)
    assert isinstance(info.value, NpcrlError) and isinstance(info.value, ValueError)


def test_option_dataclass_defaults_and_edges_are_valid() -> None:
    SamplerConfig(temperature=0.0)
    SamplerConfig(temperature=1e-3, repetition_penalty=0.01, seed=2**64 - 1)
    AgentConfig(time_budget_s=None)
    SessionOptions(intra_op_threads=0, prefix_cache_mb=0.0, gather_ms=0.0, prefill_chunk=0, kv_capacity=None)
