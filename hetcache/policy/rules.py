"""The rule machinery of the policy schema: each section field carries its `Rule` as dataclass metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a policy field may hold: its JSON kind, bounds or choices, and whether it may be null or left out.

    kind: "float", "int", "bool", "str", "choice", "ints" (block indices), "floats" (non-empty list) or "dict".
    ge / le: bounds of the value (of every element for "floats").
    nonempty: a "str" that must hold more than white space.
    optional: the field may be left out of a file (its dataclass default is used); every other field is required.
    """

    kind: str
    doc: str
    ge: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    nonempty: bool = False
    optional: bool = False
    key: str | None = None  # the JSON name where it differs from the attribute name


def spec(default: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field carrying its schema rule (`Rule(**rule)`) as metadata."""
    return field(default=default, metadata={"rule": Rule(**rule)})


def rule_of(f: dataclasses.Field) -> Rule:
    """The schema rule of a section field."""
    return f.metadata["rule"]


def json_key(f: dataclasses.Field) -> str:
    """The JSON name of a section field."""
    return rule_of(f).key or f.name


def section_to_dict(value: Any) -> dict[str, Any]:
    """The JSON form of a section dataclass (JSON names, tuples as lists; unset optional fields left out)."""
    out = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None and rule_of(f).optional:
            continue
        out[json_key(f)] = jsonable(item)
    return out


def jsonable(value: Any) -> Any:
    """Tuples as lists, objects copied (the JSON form shares nothing with the frozen policy)."""
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value
