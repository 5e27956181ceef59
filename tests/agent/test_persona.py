"""Persona cards: the shipped Oakrest cast, the system prompt, the hash, and errors that name file and field."""

from __future__ import annotations

import dataclasses
import random
import re
import textwrap

import numpy as np
import pytest
from config_helpers import load_error

from npcrl.agent.persona import Persona, builtin_persona_dir, builtin_personas, load_persona, load_personas
from npcrl.errors import NpcrlError, PersonaError

VALID_CARD = textwrap.dedent(
    """\
    name = "Tilda"
    role = "the miller of Oakrest"
    traits = ["cheerful", "nosy"]
    speaking_style = "Quick and bubbly."
    lore = ["The mill stands on the stream.", "Brom fixes the mill's iron gears."]
    goals = ["Quest: find the missing grain sacks."]
    refuse_topics = ["politics"]
    greeting = "Flour on your boots already?"
    example_lines = ["Fresh bread by noon!"]
    fallback_lines = ["Oh! Was I daydreaming? Say again."]
    """
)
# sha256 of the canonical JSON of VALID_CARD as the persona "miller": pinned so that a change to
# the hash's definition (and thus to every persona id in old play logs) is a deliberate one.
VALID_CARD_HASH = "7d52cfc87d6f3de3e8b9b5846621d7ce5b0b6ec250f9d7db7ada2c8f4265e4b3"


# Who each shipped card's lore must name. Brom, Mara and Hedda were written together and all name
# each other; Osric the miller came later and names all three, while their cards (and so their
# prompts and the persona hashes in existing play logs) were left as they were.
CAST_REFERENCES = {
    "blacksmith": ("innkeeper", "guard"),
    "innkeeper": ("blacksmith", "guard"),
    "guard": ("blacksmith", "innkeeper"),
    "miller": ("blacksmith", "innkeeper", "guard"),
}


def write_card(tmp_path, text: str = VALID_CARD, stem: str = "miller"):
    path = tmp_path / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def replace_line(text: str, key: str, new_line: str | None) -> str:
    """VALID_CARD with the line for ``key`` replaced (or removed when new_line is None)."""
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    assert len(lines) == len(text.splitlines()) - 1, key
    if new_line is not None:
        lines.append(new_line)
    return "\n".join(lines) + "\n"


# --- the shipped personas ------------------------------------------------------------------------


def test_the_oakrest_cast_ships():
    personas = builtin_personas()
    assert set(CAST_REFERENCES) == set(personas)  # a new card must say whom its lore names
    assert personas["blacksmith"].name == "Brom"
    assert personas["innkeeper"].name == "Mara"
    assert personas["guard"].name == "Captain Hedda"
    assert personas["miller"].name == "Osric"
    assert builtin_persona_dir().is_dir()


@pytest.mark.parametrize("persona_id", list(CAST_REFERENCES))
def test_shipped_personas_are_rich_and_reference_each_other(persona_id):
    personas = builtin_personas()
    persona = personas[persona_id]
    lore = " ".join(persona.lore)
    others = [personas[other].name.split()[-1] for other in CAST_REFERENCES[persona_id]]
    assert all(name in lore for name in others), f"{persona_id} lore should mention {others}"
    assert "Oakrest" in lore
    assert len(persona.lore) >= 6 and len(persona.fallback_lines) >= 3
    assert sum(goal.startswith("Quest:") for goal in persona.goals) >= 1
    assert persona.refuse_topics and len(persona.example_lines) >= 2


def test_shipped_personas_are_distinct():
    personas = list(builtin_personas().values())
    assert len({p.persona_hash for p in personas}) == len(personas)
    assert len({p.speaking_style for p in personas}) == len(personas)
    fallbacks = [line for p in personas for line in p.fallback_lines]
    assert len(set(fallbacks)) == len(fallbacks)


@pytest.mark.parametrize("persona_id", list(CAST_REFERENCES))
def test_system_prompt_has_identity_style_lore_and_rules(persona_id):
    persona = builtin_personas()[persona_id]
    prompt = persona.system_prompt()
    assert prompt.startswith(f"You are {persona.name}, {persona.role}.")
    assert persona.speaking_style in prompt
    assert all(fact in prompt for fact in persona.lore)
    assert all(goal in prompt for goal in persona.goals)
    assert all(topic in prompt for topic in persona.refuse_topics)
    assert "stay in character" in prompt and "one to three" in prompt
    assert "Never write the traveller's words" in prompt
    assert "password" not in prompt
    # Small enough to leave most of a small model's context for the conversation.
    assert len(prompt) < 4000


def test_canary_is_planted_with_an_order_to_keep_it():
    persona = builtin_personas()["blacksmith"]
    prompt = persona.system_prompt(canary="AMBER-FALCON-7391")
    assert prompt.count("AMBER-FALCON-7391") == 1
    canary_line = next(line for line in prompt.splitlines() if "AMBER-FALCON-7391" in line)
    assert "Never" in canary_line
    assert prompt.startswith(persona.system_prompt())
    for bad in ("", "  ", "two\nlines"):
        with pytest.raises(PersonaError):
            persona.system_prompt(canary=bad)


def test_prompt_omits_empty_optional_sections(tmp_path):
    text = replace_line(
        replace_line(replace_line(VALID_CARD, "goals", None), "example_lines", None), "refuse_topics", None
    )
    persona = load_persona(write_card(tmp_path, text))
    assert persona.goals == persona.example_lines == persona.refuse_topics == ()
    prompt = persona.system_prompt()
    assert "What you want" not in prompt and "will not talk about" not in prompt and "might say" not in prompt


# --- hash ---------------------------------------------------------------------------------------


def test_persona_hash_is_pinned_and_stable(tmp_path):
    first = load_persona(write_card(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    second = load_persona(write_card(tmp_path / "elsewhere"))
    assert first.persona_hash == second.persona_hash == VALID_CARD_HASH
    assert re.fullmatch(r"[0-9a-f]{64}", first.persona_hash)


def test_whitespace_layout_does_not_change_the_hash(tmp_path):
    spaced = VALID_CARD.replace('role = "the miller of Oakrest"', 'role = """  the miller\n   of Oakrest """')
    assert load_persona(write_card(tmp_path, spaced)).persona_hash == VALID_CARD_HASH


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Persona)])
def test_hash_changes_when_any_field_changes(tmp_path, field):
    persona = load_persona(write_card(tmp_path))
    value = getattr(persona, field)
    if field == "id":
        changed = "miller2"
    elif isinstance(value, tuple):
        changed = (*value, "One more line.")
    else:
        changed = value + "x"
    assert dataclasses.replace(persona, **{field: changed}).persona_hash != persona.persona_hash


# --- fallback lines -----------------------------------------------------------------------------


def test_fallback_line_by_index_and_by_rng():
    persona = builtin_personas()["innkeeper"]
    lines = persona.fallback_lines
    assert [persona.fallback_line(i) for i in range(len(lines))] == list(lines)
    assert persona.fallback_line(len(lines) + 1) == lines[1]
    assert persona.fallback_line(-1) == lines[-1]
    drawn = {persona.fallback_line(random.Random(seed)) for seed in range(50)}
    assert drawn == set(lines)
    assert persona.fallback_line(np.random.default_rng(3)) in lines
    assert persona.fallback_line(random.Random(7)) == persona.fallback_line(random.Random(7))
    with pytest.raises(TypeError):
        persona.fallback_line("0")  # type: ignore[arg-type]


# --- errors -------------------------------------------------------------------------------------


def assert_error(path, *fragments):
    return load_error(load_persona, path, PersonaError, *fragments)


def test_persona_error_is_an_npcrl_error():
    assert issubclass(PersonaError, NpcrlError)


@pytest.mark.parametrize("field", ["name", "role", "traits", "speaking_style", "lore", "greeting", "fallback_lines"])
def test_missing_required_field(tmp_path, field):
    assert_error(write_card(tmp_path, replace_line(VALID_CARD, field, None)), "missing", f"'{field}'")


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    message = assert_error(write_card(tmp_path, VALID_CARD + 'lores = ["x"]\nmood = "grim"\n'), "'lores'", "'mood'")
    assert "did you mean 'lore'" in message


def test_a_table_is_an_unknown_key(tmp_path):
    assert_error(write_card(tmp_path, VALID_CARD + "[quest]\nname = 'x'\n"), "'quest'")


@pytest.mark.parametrize(
    ("key", "line", "fragments"),
    [
        ("name", "name = 42", ("'name'", "string", "integer")),
        ("name", "name = ['Tilda']", ("'name'", "string", "array")),
        ("traits", 'traits = "cheerful"', ("'traits'", "array of strings", "a string")),
        ("lore", 'lore = ["fine", 3]', ("'lore'", "item 1", "integer")),
        ("fallback_lines", "fallback_lines = [true]", ("'fallback_lines'", "item 0", "boolean")),
        ("goals", "goals = [{ a = 1 }]", ("'goals'", "table")),
        ("greeting", "greeting = 1.5", ("'greeting'", "float")),
    ],
)
def test_wrong_types(tmp_path, key, line, fragments):
    assert_error(write_card(tmp_path, replace_line(VALID_CARD, key, line)), *fragments)


@pytest.mark.parametrize(
    ("key", "line", "fragments"),
    [
        ("name", f'name = "{"N" * 41}"', ("'name'", "41 characters", "at most 40")),
        ("lore", f'lore = ["{"a " * 151}"]', ("'lore'", "item 0", "at most 300")),
        ("fallback_lines", "fallback_lines = []", ("'fallback_lines'", "0 items")),
        ("traits", "traits = []", ("'traits'", "0 items")),
        ("lore", "lore = [" + ", ".join(['"fact"'] * 25) + "]", ("'lore'", "25 items")),
        ("name", 'name = "   "', ("'name'", "empty")),
        ("example_lines", 'example_lines = ["fine", " "]', ("'example_lines'", "item 1", "empty")),
    ],
)
def test_bounds(tmp_path, key, line, fragments):
    assert_error(write_card(tmp_path, replace_line(VALID_CARD, key, line)), *fragments)


def test_invalid_toml_names_the_file(tmp_path):
    assert_error(write_card(tmp_path, VALID_CARD + "name = \n"), "invalid TOML")
    assert_error(write_card(tmp_path, VALID_CARD + 'name = "again"\n'), "invalid TOML")


def test_unreadable_files(tmp_path):
    assert_error(tmp_path / "nowhere.toml", "cannot read")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(VALID_CARD.replace("Tilda", "Tild\xe9").encode("latin-1"))
    assert_error(bad, "UTF-8")


def test_file_stem_must_be_a_usable_id(tmp_path):
    assert_error(write_card(tmp_path, stem="the miller"), "'id'", "the miller")


def test_direct_construction_validates_too():
    persona = builtin_personas()["guard"]
    with pytest.raises(PersonaError, match="'fallback_lines'"):
        dataclasses.replace(persona, fallback_lines=())
    with pytest.raises(PersonaError, match="'name'"):
        dataclasses.replace(persona, name="x" * 41)
    normalised = dataclasses.replace(persona, traits=["  stern ", "fair"])
    assert normalised.traits == ("stern", "fair")


def test_load_personas_directory(tmp_path):
    write_card(tmp_path, stem="miller")
    write_card(tmp_path, VALID_CARD.replace("Tilda", "Odo"), stem="baker")
    (tmp_path / "notes.txt").write_text("not a card")
    personas = load_personas(tmp_path)
    assert list(personas) == ["baker", "miller"]
    assert personas["baker"].name == "Odo" and personas["baker"].id == "baker"
    with pytest.raises(PersonaError, match="does not exist"):
        load_personas(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PersonaError, match="no persona cards"):
        load_personas(tmp_path / "empty")
    write_card(tmp_path, VALID_CARD + "oops = 1\n", stem="broken")
    with pytest.raises(PersonaError, match="broken.toml"):
        load_personas(tmp_path)
