"""Edits of a policy by field name, wherever the field sits in the nesting (the result is validated again)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import PolicyError
from .core import Policy
from .reader import policy_from_dict
from .rules import json_key, jsonable, section_to_dict
from .sections import FORMAT_DOC, SECTIONS


def policy_with(policy: Policy, **changes: Any) -> Policy:
    """Copy of `policy` with fields changed by name, wherever they sit in the nesting (validated again)."""
    data = policy.to_dict()
    by_name = {s.name: s for s in SECTIONS}
    for key, value in changes.items():
        if key in by_name:
            data[key] = section_to_dict(value) if dataclasses.is_dataclass(value) else value
            if data[key] is None:
                data.pop(key)
            continue
        if key in data:
            data[key] = jsonable(value)
            continue
        for section in SECTIONS:
            names = {f.name: json_key(f) for f in dataclasses.fields(section.cls)}
            if key in names and section.name in data:
                data[section.name][names[key]] = jsonable(value)
                break
        else:
            raise PolicyError(f"unknown policy field {key!r}.", f"see {FORMAT_DOC} for the field names.")
    return policy_from_dict(data, origin=f"policy '{policy.name}'")


def field_value(policy: Policy, name: str) -> Any:
    """The value of a field by name, wherever it sits in the nesting (the names `Policy.replace` takes)."""
    for section in SECTIONS:
        value = getattr(policy, section.name)
        if value is not None and name in {f.name for f in dataclasses.fields(section.cls)}:
            return getattr(value, name)
    raise PolicyError(f"unknown policy field {name!r}.", f"see {FORMAT_DOC} for the field names.")
