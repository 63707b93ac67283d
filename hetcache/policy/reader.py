"""Validation of a JSON-form policy against the schema: one generic reader that names the offending field."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..contracts import parse_contract
from ..errors import HetCacheError, PolicyError
from ..steps import FULL, PLAN_LETTERS, REUSE
from .core import Policy
from .model_match import check_blocks
from .rules import Rule, json_key, rule_of
from .sections import (
    FORMAT_DOC,
    REQUIRED_SECTIONS,
    SCHEMA,
    SCHEMA_PREFIX,
    SCHEMA_VERSION,
    SECTIONS,
    TOP_LEVEL,
    ModelSpec,
    Section,
    StepPlanSpec,
    WorkloadSpec,
)


class _Reader:
    """Reads the fields of one JSON object against their rules, naming the field path in every error."""

    def __init__(self, data: Any, origin: str, path: str = ""):
        self.origin, self.path = origin, path
        if not isinstance(data, dict):
            self.fail(f"must be an object, got {type(data).__name__}")
        self.data = data
        self.seen: set[str] = set()

    def fail(self, message: str, fix: str | None = None):
        where = self.path or "(top level)"
        raise PolicyError(f"{self.origin}: {where} {message}.", fix or f"correct the field (see {FORMAT_DOC}).")

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def child(self, section: Section) -> _Reader | None:
        """The reader of a nested section, or None when an optional one is absent."""
        self.seen.add(section.name)
        if self.data.get(section.name) is None:
            if section.required:
                self.fail(
                    f"has no {section.name} section",
                    f"a policy must hold every one of {', '.join(REQUIRED_SECTIONS)} with all their fields, so that "
                    f"its name and provenance describe what it does; re-export it with hetcache-tune or write the "
                    f"section out ({FORMAT_DOC} lists every field).",
                )
            return None
        return _Reader(self.data[section.name], self.origin, self._key(section.name))

    def get(self, key: str, rule: Rule, default: Any = None) -> Any:
        """The value of `key`, checked against `rule` (a missing optional field gives `default`)."""
        self.seen.add(key)
        sub = _Reader({}, self.origin, self._key(key))
        if key not in self.data:
            if not rule.optional:
                sub.fail(
                    "is missing",
                    f"add it ({rule.doc}); a policy states every field of its sections ({FORMAT_DOC}).",
                )
            return default
        value = self.data[key]
        if value is None:
            if not rule.nullable:
                sub.fail(f"is null; it must be {_kind_text(rule)}")
            return None
        return _checked(sub, value, rule)

    def read(self, cls: type) -> Any:
        """An instance of the section dataclass `cls`, every field read by its rule; unknown fields are refused."""
        values = {}
        for f in dataclasses.fields(cls):
            default = None if f.default is dataclasses.MISSING else f.default
            values[f.name] = self.get(json_key(f), rule_of(f), default)
        self.finish()
        return cls(**values)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            self.fail(
                f"has unknown field(s) {', '.join(unknown)}",
                f"remove or rename them; known fields: {', '.join(sorted(self.seen))}.",
            )


def _kind_text(rule: Rule) -> str:
    """How an error names the kind of value a rule wants."""
    return {
        "float": "a finite number",
        "int": "an integer",
        "bool": "true or false",
        "str": "a string",
        "choice": f"one of {', '.join(map(str, rule.choices or ()))}",
        "ints": "a list of block indices (integers ≥ 0)",
        "floats": "a non-empty list of finite numbers",
        "dict": "an object",
    }[rule.kind]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked(sub: _Reader, value: Any, rule: Rule) -> Any:
    """`value` checked against `rule` and converted to its Python form (floats, tuples)."""
    kind = rule.kind
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            sub.fail(f"must be a number, got {value!r}")
        if not math.isfinite(value):
            sub.fail(f"must be a finite number, got {value!r}", "give a finite value (Infinity and NaN mean nothing).")
        value = float(value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            sub.fail(f"must be an integer, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            sub.fail(f"must be true or false, got {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            sub.fail(f"must be a string, got {value!r}")
        if rule.nonempty and not value.strip():
            sub.fail(f"must be a non-empty string, got {value!r}", f"give it a value ({rule.doc}).")
    elif kind == "choice":
        if value not in (rule.choices or ()):
            sub.fail(f"must be one of {', '.join(map(str, rule.choices or ()))}, got {value!r}")
    elif kind == "ints":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            sub.fail(f"must be a list of integers or null (= all), got {value!r}")
        if any(v < 0 for v in value):
            sub.fail(f"must hold block indices ≥ 0, got {value!r}")
        value = tuple(value)
    elif kind == "floats":
        if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
            sub.fail(f"must be a non-empty list of finite numbers or null, got {value!r}")
        value = tuple(float(v) for v in value)
    elif kind == "dict" and not isinstance(value, dict):
        sub.fail(f"must be an object, got {value!r}")
    if kind == "floats":  # bounds of every element
        for item in value:
            if (rule.ge is not None and item < rule.ge) or (rule.le is not None and item > rule.le):
                sub.fail(f"must hold numbers from {rule.ge:g} to {rule.le:g}, got {item!r}")
        return value
    if rule.ge is not None and value < rule.ge:
        sub.fail(f"must be ≥ {rule.ge}, got {value!r}")
    if rule.le is not None and value > rule.le:
        sub.fail(f"must be ≤ {rule.le}, got {value!r}")
    return value


def check_plan_string(plan: str, what: str = "plan") -> str:
    """Validate an explicit per-step plan over F/P/R (it must start with F: nothing is cached before)."""
    if not isinstance(plan, str) or not plan:
        raise PolicyError(f"{what} must be a non-empty string over F, P, R, got {plan!r}.", 'e.g. "FFPPRPF".')
    bad = sorted(set(plan) - PLAN_LETTERS)
    if bad:
        raise PolicyError(
            f"{what} {plan!r} holds letters other than F, P, R ({''.join(bad)}).",
            "use F (full), P (partial) or R (reuse), one letter per denoising step.",
        )
    if plan[0] != FULL:
        raise PolicyError(
            f"{what} {plan!r} starts with {plan[0]!r}; the first step must be F (nothing is cached before it).",
            "start the plan with F.",
        )
    return plan


def check_plan_steps(plan: str, steps: int, what: str = "plan") -> str:
    """An explicit plan for a run of `steps` steps: one letter per step (never cut or padded) and not ending on R
    (the run's output would be a reused, stale step)."""
    check_plan_string(plan, what)
    if len(plan) != steps:
        raise PolicyError(
            f"{what} {plan!r} has {len(plan)} steps but the run takes {steps}.",
            f"give one letter per denoising step (a plan of {steps} letters), or run with --steps {len(plan)}.",
        )
    if plan.endswith(REUSE):
        raise PolicyError(
            f"{what} {plan!r} ends on R: the run's output would be a reused step, never computed.",
            "end the plan with F or P.",
        )
    return plan


def _check_schema(top: _Reader) -> None:
    schema = top.get("schema", TOP_LEVEL["schema"])
    if not schema.startswith(SCHEMA_PREFIX):
        top.fail(f"is not a hetcache policy (schema {schema!r})", f'a policy has "schema": "{SCHEMA}".')
    version_text = schema[len(SCHEMA_PREFIX) :]
    if not version_text.isdigit():
        top.fail(f"has an unreadable schema {schema!r}", f'use "{SCHEMA}".')
    if int(version_text) > SCHEMA_VERSION:
        raise PolicyError(
            f"{top.origin} uses schema {schema}, newer than this hetcache reads ({SCHEMA}).",
            "upgrade hetcache, or re-export the policy with this version.",
        )
    if int(version_text) < SCHEMA_VERSION:
        top.fail(f"uses an unknown old schema {schema!r}", f"re-export it as {SCHEMA}.")


def _check_step_plan(s: _Reader, step_plan: StepPlanSpec, workload: WorkloadSpec | None) -> None:
    """The rules between step-plan fields (and the workload's step count)."""
    if step_plan.full_threshold < step_plan.reuse_threshold:
        s.fail(
            f"has full_threshold {step_plan.full_threshold} below reuse_threshold {step_plan.reuse_threshold}",
            "full_threshold must be ≥ reuse_threshold (a step is REUSE below the first, PARTIAL below the second).",
        )
    if step_plan.plan is not None:
        try:
            check_plan_string(step_plan.plan, f"{s.origin}: step_plan.plan")
        except PolicyError as exc:
            raise PolicyError(exc.what, exc.fix) from None
        if workload is not None and len(step_plan.plan) != workload.steps:
            s.fail(
                f"has a plan of {len(step_plan.plan)} steps but workload.steps is {workload.steps}",
                "make the plan one letter per denoising step.",
            )
    for key in ("warmup_steps", "final_full_steps"):
        count = getattr(step_plan, key)
        if workload is not None and count > workload.steps:
            s.fail(
                f"has {key} {count} but workload.steps is {workload.steps}: no run it was tuned for has that many",
                f"give {key} at most {workload.steps} (every step is FULL at that count already).",
            )
    if step_plan.rule == "explicit" and step_plan.plan is None:
        s.fail('has rule "explicit" but no plan', 'add "plan": "FF…" or use rule "accumulated_change".')


def policy_from_dict(data: Any, origin: str = "policy") -> Policy:
    """Validate a JSON-form policy against the schema and build a Policy; every error names the field."""
    top = _Reader(data, origin)
    _check_schema(top)
    name = top.get("name", TOP_LEVEL["name"])
    description = top.get("description", TOP_LEVEL["description"], "")
    provenance = top.get("provenance", TOP_LEVEL["provenance"], {})
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        reader = top.child(section)
        sections[section.name] = reader.read(section.cls) if reader is not None else None
    top.finish()
    if sections["workload"] is not None and sections["workload"].contract is not None:
        try:
            contract = parse_contract(sections["workload"].contract, f"{origin}: workload.contract")
        except HetCacheError as exc:
            raise PolicyError(exc.what, exc.fix) from None
        sections["workload"] = dataclasses.replace(sections["workload"], contract=contract.name)
    policy = Policy(name=name, description=description, provenance=dict(provenance), **sections)
    _check_step_plan(_Reader({}, origin, "step_plan"), policy.step_plan, policy.workload)
    if policy.model is not None:
        _check_fingerprint(policy.model, origin)
        check_blocks(policy.layers, policy.model.architecture, origin, "its model")
    return policy


def _check_fingerprint(model: ModelSpec, origin: str) -> None:
    """The model section's readable architecture must be the one its fingerprint hashes: a copy edited (or pasted
    from another model) would make every later check compare against the wrong model."""
    from ..fingerprint import fingerprint_of

    expected = fingerprint_of(model.class_name, model.architecture)
    if expected != model.fingerprint:
        raise PolicyError(
            f"{origin}: model.architecture does not match model.fingerprint {model.fingerprint} (class "
            f"{model.class_name} with that architecture hashes to {expected}).",
            "restore the model section the policy was exported with (re-export it with hetcache-tune).",
        )
