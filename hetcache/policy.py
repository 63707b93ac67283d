"""Policy files (schema `hetcache.policy/v1`): what a cached run does, for which model, and where it came from.

A policy is plain JSON so that teams can ship it next to a model. The schema is declared once, here: every field of
the section dataclasses carries its rule (`Rule`: kind, bounds, choices, whether it may be null or left out) as
dataclass metadata, `SECTIONS` says which sections a file must hold, and one generic reader (`policy_from_dict`)
checks a file against them, naming the offending field. docs/policy-format.md is generated from the same rules.
Applying a policy to a model whose fingerprint differs, or to any model when the policy names none, is refused
unless the caller opts out (`strict=False`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic
from .dtypes import CACHE_DTYPES, CACHE_ONLY_DTYPES
from .errors import FingerprintMismatchError, PolicyError
from .steps import FULL, PLAN_LETTERS

SCHEMA = "hetcache.policy/v1"
SCHEMA_PREFIX = "hetcache.policy/v"
SCHEMA_VERSION = 1
FORMAT_DOC = "docs/policy-format.md"

SELECTIONS = ("stride", "kmeans", "attention", "kmeans_attention")
FEATURE_SELECTIONS = frozenset({"kmeans", "kmeans_attention"})  # cluster hidden states of the last FULL step
SCORE_SELECTIONS = frozenset({"attention", "kmeans_attention"})  # rank by the generative queries' attention mass
SKIP_FILLS = ("residual", "output")
FORECASTS = ("none", "linear")  # how cached residuals are carried to a later step: as they are, or extrapolated
PLAN_RULES = ("accumulated_change", "explicit")
CACHE_DTYPE_CHOICES = (*CACHE_DTYPES, *CACHE_ONLY_DTYPES)  # float8: stored in one byte, computed in the model dtype


# ---------------------------------------------------------------------------------------------------------
# the schema: one rule per field


@dataclass(frozen=True)
class Rule:
    """What a policy field may hold: its JSON kind, bounds or choices, and whether it may be null or left out.

    kind: "float", "int", "bool", "str", "choice", "ints" (block indices), "floats" (non-empty list) or "dict".
    optional: the field may be left out of a file (its dataclass default is used); every other field is required.
    """

    kind: str
    doc: str
    ge: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
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


@dataclass(frozen=True)
class StepPlanSpec:
    """How each denoising step is classified FULL / PARTIAL / REUSE (docs/method.md, "Step plan")."""

    rule: str = spec("accumulated_change", kind="choice", choices=PLAN_RULES, doc="how steps are classified")
    reuse_threshold: float = spec(
        0.1, kind="float", ge=0.0, doc="accumulated (rescaled) change below which a step is REUSE"
    )
    full_threshold: float = spec(
        0.15, kind="float", ge=0.0, doc="accumulated change from which a step is FULL (≥ reuse_threshold)"
    )
    warmup_steps: int = spec(2, kind="int", ge=1, doc="first steps that are always FULL")
    final_full_steps: int = spec(1, kind="int", ge=0, doc="last steps that are always FULL (the last one is anyway)")
    polynomial: tuple[float, ...] | None = spec(
        None, kind="floats", nullable=True, doc="rescaling polynomial of the modulation change (highest power first)"
    )
    plan: str | None = spec(
        None, kind="str", nullable=True, doc="explicit per-step plan over F/P/R (one letter per step), or null"
    )


@dataclass(frozen=True)
class TokenSpec:
    """Token classes and which margin/context tokens are recomputed on PARTIAL steps."""

    mask_threshold: float = spec(0.0, kind="float", ge=0.0, le=0.999, doc="mask value above which a token is edited")
    margin_width: int = spec(2, kind="int", ge=0, doc="width in latent tokens of the margin ring around the mask")
    margin_frames: int = spec(0, kind="int", ge=0, doc="latent frames the margin extends over in time")
    margin_ratio: float = spec(0.5, kind="float", ge=0.0, le=1.0, doc="share of margin tokens recomputed")
    context_ratio: float = spec(0.1, kind="float", ge=0.0, le=1.0, doc="share of context tokens recomputed")
    selection: str = spec("kmeans_attention", kind="choice", choices=SELECTIONS, doc="how context tokens are chosen")
    clusters: int = spec(16, kind="int", ge=1, doc="k-means clusters (k-means selections only)")
    selection_layer: int = spec(-1, kind="int", doc="block whose features / attention drive the selection")
    skip_fill: str = spec("residual", kind="choice", choices=SKIP_FILLS, doc="what skipped tokens take from cache")
    seed: int = spec(0, kind="int", doc="seed of the k-means initialisation")
    refresh_skipped_kv: bool = spec(
        False,
        kind="bool",
        optional=True,
        doc="skipped tokens' keys/values recomputed from their approximated inputs (projections only)",
    )

    @property
    def needs_features(self) -> bool:
        """Whether the selection clusters hidden-state features (captured on FULL steps)."""
        return self.selection in FEATURE_SELECTIONS and self.context_ratio > 0

    @property
    def needs_scores(self) -> bool:
        """Whether the selection ranks context tokens by attention mass (captured on FULL steps)."""
        return self.selection in SCORE_SELECTIONS and self.context_ratio > 0


@dataclass(frozen=True)
class LayerSpec:
    """Which main blocks and VACE blocks run partial on PARTIAL steps (null = all of them, [] = none)."""

    partial_blocks: tuple[int, ...] | None = spec(
        None, kind="ints", nullable=True, doc="main blocks run partial (null: all, []: none)"
    )
    partial_vace_blocks: tuple[int, ...] | None = spec(
        None, kind="ints", nullable=True, doc="VACE blocks run partial (null: all, []: none)"
    )

    @property
    def has_partial_block(self) -> bool:
        """Whether a PARTIAL step computes anything partially (else it is a FULL step in all but name)."""
        return self.partial_blocks != () or self.partial_vace_blocks != ()


@dataclass(frozen=True)
class CacheSpec:
    """Storage of the per-layer caches."""

    dtype: str = spec("auto", kind="choice", choices=CACHE_DTYPE_CHOICES, doc='cache dtype ("auto": the model\'s own)')
    offload: bool = spec(False, kind="bool", doc="keep caches in host memory between steps")
    forecast: str = spec(
        "none",
        kind="choice",
        choices=FORECASTS,
        optional=True,
        doc="cached residuals extrapolated in time from the last two computed steps (REUSE, skipped tokens)",
    )


@dataclass(frozen=True)
class ModelSpec:
    """The architecture a policy was made for (`hetcache.fingerprint.model_fingerprint`)."""

    family: str = spec(kind="str", doc='hetcache model family ("wan", "wan-vace")')
    class_name: str = spec(kind="str", key="class", doc="diffusers transformer class")
    fingerprint: str = spec(kind="str", doc="hash of the architecture fields")
    architecture: dict[str, Any] = field(
        metadata={"rule": Rule("dict", "the architecture fields (num_layers, vace_layers, …)")}
    )


@dataclass(frozen=True)
class WorkloadSpec:
    """The workload a policy was tuned for; the resolved plan is valid for exactly `steps` steps."""

    steps: int = spec(kind="int", ge=1, doc="denoising steps")
    height: int | None = spec(None, kind="int", ge=1, nullable=True, optional=True, doc="frame height in pixels")
    width: int | None = spec(None, kind="int", ge=1, nullable=True, optional=True, doc="frame width in pixels")
    num_frames: int | None = spec(None, kind="int", ge=1, nullable=True, optional=True, doc="frames per clip")
    guidance_scale: float | None = spec(
        None, kind="float", ge=0.0, nullable=True, optional=True, doc="classifier-free guidance scale"
    )
    scheduler: str | None = spec(None, kind="str", nullable=True, optional=True, doc="scheduler class (and shift)")
    name: str | None = spec(None, kind="str", nullable=True, optional=True, doc="workload name")


@dataclass(frozen=True)
class Section:
    """A nested object of a policy file: its JSON name, dataclass and whether every policy must hold it."""

    name: str
    cls: type
    required: bool
    doc: str


SECTIONS = (
    Section("model", ModelSpec, False, "the architecture it was made for; without it, applying needs strict=False"),
    Section("workload", WorkloadSpec, False, "the workload it was tuned for (an explicit plan must match its steps)"),
    Section("step_plan", StepPlanSpec, True, "which steps are FULL, PARTIAL or REUSE"),
    Section("tokens", TokenSpec, True, "which tokens a PARTIAL step computes"),
    Section("layers", LayerSpec, True, "which blocks a PARTIAL step runs partially"),
    Section("cache", CacheSpec, True, "how caches are stored"),
)
REQUIRED_SECTIONS = tuple(s.name for s in SECTIONS if s.required)
TOP_LEVEL = {
    "schema": Rule("str", "the format and its version", choices=(SCHEMA,)),
    "name": Rule("str", "the policy's name"),
    "description": Rule("str", "what it is for, in a sentence", optional=True),
    "provenance": Rule("dict", "where it came from (tool, study, trial, measured speed and quality)", optional=True),
}


@dataclass(frozen=True)
class Policy:
    """A complete cache policy; `to_dict()` gives the JSON form back."""

    name: str
    step_plan: StepPlanSpec = field(default_factory=StepPlanSpec)
    tokens: TokenSpec = field(default_factory=TokenSpec)
    layers: LayerSpec = field(default_factory=LayerSpec)
    cache: CacheSpec = field(default_factory=CacheSpec)
    model: ModelSpec | None = None
    workload: WorkloadSpec | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    # -- conversions ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form of the policy (schema `hetcache.policy/v1`)."""
        out: dict[str, Any] = {"schema": SCHEMA, "name": self.name, "description": self.description}
        for section in SECTIONS:
            value = getattr(self, section.name)
            if value is not None:
                out[section.name] = section_to_dict(value)
        out["provenance"] = dict(self.provenance)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy as JSON, atomically."""
        return atomic.write_json(path, self.to_dict())

    def replace(self, **changes: Any) -> Policy:
        """A copy with top-level fields or nested fields (`reuse_threshold=...`) changed."""
        return policy_with(self, **changes)

    # -- checks --------------------------------------------------------------------------------------------
    def check_model(self, model_fp: dict[str, Any], strict: bool = True, source: str = "policy") -> None:
        """Refuse to apply this policy to the model of fingerprint `model_fp` (`fingerprint.model_fingerprint`).

        Always refused: block indices the model does not have. With `strict`: a policy made for another
        architecture, and a policy that names no model at all (it was tuned for nothing in particular).
        """
        self.check_blocks(model_fp["architecture"], f"{source} '{self.name}'", "the model")
        if not strict:
            return
        if self.model is None:
            raise FingerprintMismatchError(
                f"{source} '{self.name}' names no model, so nothing says it suits this "
                f"{model_fp['class']} (its speed and quality were not measured on it).",
                "use a policy tuned for this model (hetcache-tune), or pass strict=False / --no-strict to apply it "
                "to any model.",
            )
        if self.model.fingerprint == model_fp["fingerprint"]:
            return
        ours, theirs = self.model.architecture, model_fp["architecture"]
        diffs = [
            f"{k}: policy {ours.get(k)!r} vs model {theirs.get(k)!r}" for k in ours if ours.get(k) != theirs.get(k)
        ]
        if self.model.class_name != model_fp["class"]:
            diffs.insert(0, f"class: policy {self.model.class_name} vs model {model_fp['class']}")
        raise FingerprintMismatchError(
            f"{source} '{self.name}' was made for a different model ({'; '.join(diffs) or 'fingerprint differs'}).",
            "use a policy tuned for this model (hetcache-tune), or pass strict=False / --no-strict to apply it anyway.",
        )

    def check_blocks(self, architecture: dict[str, Any], where: str, what: str) -> None:
        """Refuse partial_blocks / partial_vace_blocks indices beyond the depth of `architecture`."""
        n_layers = architecture.get("num_layers")
        n_vace = len(architecture.get("vace_layers") or [])
        for key, values, limit in (
            ("partial_blocks", self.layers.partial_blocks, n_layers),
            ("partial_vace_blocks", self.layers.partial_vace_blocks, n_vace),
        ):
            if values and isinstance(limit, int) and max(values) >= limit:
                raise PolicyError(
                    f"{where}: layers.{key} holds index {max(values)} but {what} has {limit} such blocks.",
                    f"keep layers.{key} within the model's blocks, or use a policy tuned for this model.",
                )


# ---------------------------------------------------------------------------------------------------------
# loading and validation


def load_policy(source: str | os.PathLike | dict | Policy) -> Policy:
    """Load a policy from a path, a shipped policy name, a dict, or return a Policy unchanged."""
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        return policy_from_dict(source, origin="policy dict")
    if not isinstance(source, (str, os.PathLike)):
        raise PolicyError(
            f"a policy must be a file path, a shipped policy name, a dict or a Policy, got {type(source).__name__}.",
            "pass e.g. 'policy.json' or a name listed by `hetcache policies`.",
        )
    text_source = os.fspath(source)
    path = Path(text_source)
    if path.is_file():
        return _load_file(path)
    looks_like_path = path.suffix == ".json" or os.sep in text_source
    if looks_like_path:
        raise PolicyError(f"policy file '{text_source}' does not exist.", "check the path, or pass a shipped name.")
    from hetcache import policies

    if text_source in policies.names():
        return _load_file(policies.policy_path(text_source))
    raise PolicyError(
        f"unknown policy '{text_source}': not a file and not a shipped policy.",
        f"pass a policy JSON path or one of: {', '.join(policies.names())}.",
    )


def _load_file(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file '{path}' cannot be read ({exc}).", "check the file permissions.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(
            f"policy file '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
            "fix the JSON or re-export the policy with hetcache-tune.",
        ) from exc
    return policy_from_dict(data, origin=f"policy file '{path}'")


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
    policy = Policy(name=name, description=description, provenance=dict(provenance), **sections)
    _check_step_plan(_Reader({}, origin, "step_plan"), policy.step_plan, policy.workload)
    if policy.model is not None:
        policy.check_blocks(policy.model.architecture, origin, "its model")
    return policy


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
            data[key] = _jsonable(value)
            continue
        for section in SECTIONS:
            names = {f.name: json_key(f) for f in dataclasses.fields(section.cls)}
            if key in names and section.name in data:
                data[section.name][names[key]] = _jsonable(value)
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


def section_to_dict(value: Any) -> dict[str, Any]:
    """The JSON form of a section dataclass (JSON names, tuples as lists; unset optional fields left out)."""
    out = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None and rule_of(f).optional:
            continue
        out[json_key(f)] = _jsonable(item)
    return out


def _jsonable(value: Any) -> Any:
    """Tuples as lists, objects copied (the JSON form shares nothing with the frozen policy)."""
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def model_spec_from_fingerprint(fp: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from `fingerprint.model_fingerprint(model)`."""
    return ModelSpec(fp["family"], fp["class"], fp["fingerprint"], dict(fp["architecture"]))


# ---------------------------------------------------------------------------------------------------------
# the schema as documentation


def _allowed(rule: Rule) -> str:
    """The allowed values of a rule, in words."""
    if rule.choices:
        text = ", ".join(f"`{c}`" for c in rule.choices)
    elif rule.kind == "ints":
        text = "block indices ≥ 0"
    elif rule.kind == "floats":
        text = "finite numbers"
    elif rule.ge is not None and rule.le is not None:
        text = f"{rule.ge:g} to {rule.le:g}"
    elif rule.ge is not None:
        text = f"≥ {rule.ge:g}"
    else:
        text = "any"
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
