"""A TOML table read into one of the training config's dataclasses, each value's type checked.

Kept apart from ``config`` (the dataclasses and their defaults) so that file reads as the list of
settings. Errors name the file and key: ``where`` carries them in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from npcrl.errors import TrainConfigError

NONE = "none"
"""what a TOML file writes for an optional setting that is off (``ppo.kl_stop = "none"``)"""


def section_from_toml(section_cls: type, values: dict[str, Any], where: str) -> Any:
    """``section_cls`` built from a TOML table: unknown keys refused, each value of its field's type
    (ranges are checked later, by the section's ``validate``)."""
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    defaults = section_cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        annotation = str(fields[key].type)
        if "None" in annotation and (value is None or value == NONE):
            kwargs[key] = None  # TOML has no null: an optional setting is turned off with "none"
        elif isinstance(default, bool) or annotation == "bool":
            kwargs[key] = typed(value, bool, f"{where}.{key}")
        elif annotation.startswith("int"):
            kwargs[key] = typed(value, int, f"{where}.{key}")
        elif annotation.startswith("float"):
            # validate() stores it as a float once it is known to be in range (a huge int is not).
            kwargs[key] = typed(value, (int, float), f"{where}.{key}")
        elif annotation.startswith("str"):
            kwargs[key] = typed(value, str, f"{where}.{key}")
        elif annotation.startswith("list"):
            items = typed(value, list, f"{where}.{key}")
            kwargs[key] = [typed(item, str, f"{where}.{key}[]") for item in items]
        else:  # pragma: no cover - every field type is handled above
            raise TypeError(f"unhandled config annotation {annotation}")
    return section_cls(**kwargs)


def typed(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is one of ``types`` (a bool is not a number here), else an error naming ``where``."""
    # bool is an int in Python; a TOML `true` where a number belongs is a mistake.
    wants_bool = types is bool or (isinstance(types, tuple) and bool in types)
    if isinstance(value, bool) and not wants_bool:
        raise TrainConfigError(f"{where} = {value!r}: expected {type_name(types)}")
    if not isinstance(value, types):
        raise TrainConfigError(f"{where} = {value!r}: expected {type_name(types)}, got {type(value).__name__}")
    return value


def type_name(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__
