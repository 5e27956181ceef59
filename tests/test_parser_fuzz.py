"""Property-based fuzzing of every TOML parser: persona cards, reward specs, training configs and
player profiles. Random documents (the format's own keys with values of every TOML type, random
keys, random nesting) and random text or bytes must either load or fail with the project's own
error type (a subclass of ``NpcrlError``), never a raw Python exception.

Each parser gets ``FUZZ_EXAMPLES`` structured documents and as many raw ones; the whole file
takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npcrl.agent.persona import _LIMITS as PERSONA_FIELDS
from npcrl.agent.persona import load_persona
from npcrl.errors import NpcrlError
from npcrl.reward.spec import TurnOutcome, conversation_rewards, load_reward_spec
from npcrl.sim.features import FEATURES
from npcrl.sim.profiles import _FILE_KEYS as PROFILE_KEYS
from npcrl.sim.profiles import load_profile
from npcrl.train.config import DataConfig, ModelConfig, PPOConfig, RewardModelConfig, RunConfig, load_train_config

FUZZ_EXAMPLES = 200
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- random TOML values -------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e308, -1e308, 5e-324, 0.5, 1.0, 2.0, 1e6, 1e7]),
)
integers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 3, 100, 4096, 2**63, 10**400]),
)
scalars = st.one_of(
    st.booleans(),
    integers,
    floats,
    text,
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=3)),
    max_leaves=12,
)


def toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """One value as TOML (inline tables for dicts): good enough that most documents parse."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_key(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_key(key)} = {toml_value(value)}\n" for key, value in data.items())


def table_of(keys: list[str], value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of the format's own keys (and now and then an unknown one) with random values."""
    return st.dictionaries(st.one_of(st.sampled_from(keys), text), value, max_size=len(keys) + 1)


# --- the formats --------------------------------------------------------------------------------
# Each format gets documents of two kinds: "typed" ones, where every key is the format's own and
# its value has the right type (ordinary or extreme numbers: these reach the range checks and the
# code behind them), and "random" ones, with any keys and values of any type.

numbers = st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, -1, 0.05, 0.5, 0.95, -0.5]), integers, floats)
anything = st.one_of(numbers, values)
WORDS = ["logged", "reward_model", "lora", "full", "frozen", "last", "mean", "adamw", "ridge"]
WORDS += ["fp32", "q8", "q4", "none", "auto", "fused", "torch", "ignore", "error"]
words = st.one_of(st.sampled_from(WORDS), text)
lines = st.lists(st.one_of(st.sampled_from(["Hello, {npc}.", "And {topic}?", "Hm."]), text), min_size=1, max_size=3)


def random_table(keys: list[str], value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of the format's own keys (and now and then an unknown one) with random values."""
    return st.dictionaries(st.one_of(st.sampled_from(keys), text), value, max_size=len(keys) + 1)


def typed_table(fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()) -> Any:
    return st.fixed_dictionaries(
        {key: fields[key] for key in required}, optional={k: v for k, v in fields.items() if k not in required}
    )


def by_annotation(annotation: str) -> st.SearchStrategy[Any]:
    if annotation == "bool":
        return st.booleans()
    if annotation.startswith(("int", "float")):
        return numbers
    if annotation.startswith("list"):
        return st.lists(words, max_size=3)
    return words


persona_docs = st.one_of(
    typed_table({key: lines if limit.max_items else text for key, limit in PERSONA_FIELDS.items()}),
    random_table(list(PERSONA_FIELDS), st.one_of(text, st.lists(text, max_size=4), values)),
)
REWARD_TOP = {"discount": numbers, "turn_min": numbers, "turn_max": numbers, "unknown_kinds": words}
RULE = {"weight": numbers, "min": numbers, "max": numbers, "value_scale": st.booleans()}
reward_docs = st.one_of(
    st.builds(
        lambda top, rules: {**top, "rules": rules},
        typed_table(REWARD_TOP),
        st.dictionaries(st.sampled_from(["reply", "rating", "tip"]), typed_table(RULE, ("weight",)), max_size=3),
    ),
    st.builds(
        lambda top, rules: {**top, "rules": rules},
        random_table(list(REWARD_TOP), anything),
        st.one_of(st.dictionaries(text, random_table(list(RULE), anything), max_size=3), values),
    ),
)
SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "ppo": PPOConfig,
    "run": RunConfig,
    "reward_model": RewardModelConfig,
}
train_docs = st.one_of(
    typed_table(
        {"seed": numbers}
        | {
            name: typed_table({f.name: by_annotation(str(f.type)) for f in dataclasses.fields(cls)})
            for name, cls in SECTIONS.items()
        }
    ),
    random_table(["seed", *SECTIONS], st.one_of(anything, random_table(["learning_rate", "epochs", "mode"], anything))),
)
PROFILE_FIELDS = {
    key: lines if key in ("openers", "follow_ups", "topics") else text if key == "description" else numbers
    for key in PROFILE_KEYS
    if key != "weights"
}
profile_docs = st.one_of(
    st.builds(
        lambda top, weights: {**top, "weights": weights},
        typed_table(PROFILE_FIELDS, ("description", "openers", "follow_ups")),
        typed_table(dict.fromkeys(FEATURES, numbers)),
    ),
    st.builds(
        lambda top, weights: {**top, "weights": weights},
        random_table(list(PROFILE_KEYS), anything),
        st.one_of(random_table(list(FEATURES), anything), values),
    ),
)
# Hostile files: nesting deeper than the parser's recursion, dotted keys thousands deep, integer
# literals past Python's digit limit, and half-written documents.
hostile = st.one_of(
    st.integers(1, 5000).map(lambda n: "a = " + "[" * n + "]" * n + "\n"),
    st.integers(1, 5000).map(lambda n: "a = " + "{b = " * n + "1" + "}" * n + "\n"),
    st.integers(1, 5000).map(lambda n: "a" + ".a" * n + " = 1\n"),
    st.integers(1, 6000).map(lambda n: "seed = " + "7" * n + "\n"),
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Module-scoped: hypothesis runs many examples per test and refuses function-scoped fixtures.
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def check_reward_spec(path: Path) -> None:
    spec = load_reward_spec(path)
    numbers = [spec.discount, spec.turn_min, spec.turn_max]
    numbers += [x for rule in spec.rules.values() for x in (rule.weight, rule.min, rule.max) if x is not None]
    assert all(math.isfinite(x) for x in numbers)
    # A loaded spec scores the most extreme events it allows as finite rewards, or refuses them.
    events = tuple((kind, 1.7e308 if rule.value_scale else None) for kind, rule in spec.rules.items())
    turns = [TurnOutcome(0, False, events * 3), TurnOutcome(1, False, events)]
    try:
        rewards = conversation_rewards(turns, spec)
    except NpcrlError:
        return
    assert all(math.isfinite(r) for r in rewards)


def check_train_config(path: Path) -> None:
    config = load_train_config(path)
    for name in SECTIONS:
        section = getattr(config, name)
        for spec in dataclasses.fields(section):
            value = getattr(section, spec.name)
            assert not isinstance(value, float) or math.isfinite(value), (name, spec.name, value)


PARSERS: dict[str, tuple[str, Callable[[Path], Any], st.SearchStrategy[dict[str, Any]]]] = {
    "persona": ("fuzz_card.toml", load_persona, persona_docs),
    "reward_spec": ("spec.toml", check_reward_spec, reward_docs),
    "train_config": ("train.toml", check_train_config, train_docs),
    "player_profile": ("fuzz_player.toml", load_profile, profile_docs),
}


def only_own_errors(parse: Callable[[Path], Any], path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    try:
        parse(path)
    except NpcrlError as exc:
        assert str(path) in str(exc) or repr(str(path)) in str(exc), exc


def fuzz_test(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
    filename, parse, documents = PARSERS[name]

    @FUZZ
    @given(data=documents)
    def structured(workdir: Path, data: dict[str, Any]) -> None:
        only_own_errors(parse, workdir / filename, toml_document(data))

    @FUZZ
    @given(content=st.one_of(st.binary(max_size=200), text, hostile, documents.map(toml_document).map(_mangle)))
    def raw(workdir: Path, content: str | bytes) -> None:
        only_own_errors(parse, workdir / filename, content)

    return structured, raw


def _mangle(document: str) -> str:
    # Cut a valid document short and open brackets it never closes: half-written files.
    return document[: len(document) // 2] + "[" * 8


test_persona_structured, test_persona_raw = fuzz_test("persona")
test_reward_spec_structured, test_reward_spec_raw = fuzz_test("reward_spec")
test_train_config_structured, test_train_config_raw = fuzz_test("train_config")
test_player_profile_structured, test_player_profile_raw = fuzz_test("player_profile")
