"""The schema as documentation: the field tables of docs/policy-format.md, generated from the rules."""

from __future__ import annotations

import dataclasses

from .rules import Rule, json_key, rule_of
from .sections import SECTIONS, TOP_LEVEL


def _allowed(rule: Rule) -> str:
    """The allowed values of a rule, in words."""
    if rule.choices:
        text = ", ".join(f"`{c}`" for c in rule.choices)
    elif rule.kind == "ints":
        text = "block indices ≥ 0"
    elif rule.kind == "floats":
        text = "finite numbers" + (
            f" from {rule.ge:g} to {rule.le:g}" if rule.ge is not None and rule.le is not None else ""
        )
    elif rule.ge is not None and rule.le is not None:
        text = f"{rule.ge:g} to {rule.le:g}"
    elif rule.ge is not None:
        text = f"≥ {rule.ge:g}"
    else:
        text = "non-empty" if rule.nonempty else "any"
    return text + (", or null" if rule.nullable else "")


def _row(name: str, rule: Rule, required: bool) -> str:
    need = "required" if required and not rule.optional else "optional"
    return f"| `{name}` | {rule.kind} | {_allowed(rule)} | {need} | {rule.doc} |"


def schema_markdown() -> str:
    """The field tables of docs/policy-format.md, generated from the schema (a test keeps that file in step)."""
    header = ["| field | kind | allowed | required | meaning |", "|---|---|---|---|---|"]
    lines = ["### Top level", "", *header]
    lines += [_row(key, rule, True) for key, rule in TOP_LEVEL.items()]
    for section in SECTIONS:
        state = "required" if section.required else "optional"
        lines += ["", f"### `{section.name}` ({state} section)", "", f"{section.doc[0].upper()}{section.doc[1:]}.", ""]
        lines += header
        lines += [_row(f"{section.name}.{json_key(f)}", rule_of(f), True) for f in dataclasses.fields(section.cls)]
    return "\n".join(lines) + "\n"
