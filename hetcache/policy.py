"""Policy files (schema `hetcache.policy/v1`): what a cached run does, for which model, and where it came from.

A policy is plain JSON so that teams can ship it next to a model. Loading validates every field and names the
offending one; applying it to a model whose fingerprint differs is refused unless the caller opts out.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic
from .dtypes import CACHE_DTYPES
from .errors import FingerprintMismatchError, PolicyError
from .steps import FULL, PLAN_LETTERS

SCHEMA = "hetcache.policy/v1"
SCHEMA_PREFIX = "hetcache.policy/v"
SCHEMA_VERSION = 1

SELECTIONS = ("stride", "kmeans", "attention", "kmeans_attention")
SKIP_FILLS = ("residual", "output")
PLAN_RULES = ("accumulated_change", "explicit")


@dataclass(frozen=True)
class StepPlanSpec:
    """How each denoising step is classified FULL / PARTIAL / REUSE (DESIGN.md, engine semantics 2)."""

    rule: str = "accumulated_change"
    reuse_threshold: float = 0.1
    full_threshold: float = 0.15
    warmup_steps: int = 2
    final_full_steps: int = 1
    polynomial: tuple[float, ...] | None = None
    plan: str | None = None


@dataclass(frozen=True)
class TokenSpec:
    """Token classes and which margin/context tokens are recomputed on PARTIAL steps."""

    mask_threshold: float = 0.0
    margin_width: int = 2
    margin_frames: int = 0
    margin_ratio: float = 0.5
    context_ratio: float = 0.1
    selection: str = "kmeans_attention"
    clusters: int = 16
    selection_layer: int = -1
    skip_fill: str = "residual"
    seed: int = 0


@dataclass(frozen=True)
class LayerSpec:
    """Which main blocks and VACE blocks run partial on PARTIAL steps (None = all of them)."""

    partial_blocks: tuple[int, ...] | None = None
    partial_vace_blocks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CacheSpec:
    """Storage of the per-layer caches."""

    dtype: str = "auto"
    offload: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """The architecture a policy was made for."""

    family: str
    class_name: str
    fingerprint: str
    architecture: dict[str, Any]


@dataclass(frozen=True)
class WorkloadSpec:
    """The workload a policy was tuned for; the resolved plan is valid for exactly `steps` steps."""

    steps: int
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    name: str | None = None


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
        if self.model is not None:
            out["model"] = {
                "family": self.model.family,
                "class": self.model.class_name,
                "fingerprint": self.model.fingerprint,
                "architecture": dict(self.model.architecture),
            }
        if self.workload is not None:
            out["workload"] = _drop_none(dataclasses.asdict(self.workload))
        out["step_plan"] = _jsonable(dataclasses.asdict(self.step_plan))
        out["tokens"] = dataclasses.asdict(self.tokens)
        out["layers"] = _jsonable(dataclasses.asdict(self.layers))
        out["cache"] = dataclasses.asdict(self.cache)
        out["provenance"] = dict(self.provenance)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy as JSON, atomically."""
        return atomic.write_json(path, self.to_dict())

    def replace(self, **changes: Any) -> Policy:
        """A copy with top-level fields or nested fields (`reuse_threshold=...`) changed."""
        return policy_with(self, **changes)

    # -- checks --------------------------------------------------------------------------------------------
    def check_model(self, model_fp: dict[str, Any], source: str = "policy") -> None:
        """Raise if this policy was made for a different architecture than `model_fp` (see fingerprint.py)."""
        if self.model is None or self.model.fingerprint == model_fp["fingerprint"]:
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


# ---------------------------------------------------------------------------------------------------------
# loading and validation


def load_policy(source: str | os.PathLike | dict | Policy) -> Policy:
    """Load a policy from a path, a shipped policy name, a dict, or return a Policy unchanged."""
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        return policy_from_dict(source, origin="policy dict")
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
    """Reads typed fields from a nested dict and names the field path in every error."""

    def __init__(self, data: Any, origin: str, path: str = ""):
        self.origin, self.path = origin, path
        if not isinstance(data, dict):
            self.fail(f"must be an object, got {type(data).__name__}")
        self.data = data
        self.seen: set[str] = set()

    def fail(self, message: str, fix: str | None = None):
        where = self.path or "(top level)"
        raise PolicyError(f"{self.origin}: {where} {message}.", fix or "correct the field (see DESIGN.md, Files).")

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def child(self, key: str, required: bool = False) -> _Reader | None:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                _Reader({}, self.origin, self._key(key)).fail("is missing")
            return None
        return _Reader(self.data[key], self.origin, self._key(key))

    def get(self, key: str, kind: str, default: Any = dataclasses.MISSING, **bounds: Any) -> Any:
        self.seen.add(key)
        sub = _Reader({}, self.origin, self._key(key))
        if key not in self.data or self.data[key] is None:
            if default is dataclasses.MISSING:
                sub.fail("is missing")
            return default
        value = self.data[key]
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                sub.fail(f"must be a number, got {value!r}")
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
            if value not in bounds["choices"]:
                sub.fail(f"must be one of {', '.join(map(str, bounds['choices']))}, got {value!r}")
        elif kind == "ints":
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                sub.fail(f"must be a list of integers or null (= all), got {value!r}")
            if any(v < 0 for v in value):
                sub.fail(f"must hold block indices ≥ 0, got {value!r}")
            value = tuple(value)
        elif kind == "floats":
            if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) for v in value):
                sub.fail(f"must be a non-empty list of numbers or null, got {value!r}")
            value = tuple(float(v) for v in value)
        elif kind == "dict" and not isinstance(value, dict):
            sub.fail(f"must be an object, got {value!r}")
        if "ge" in bounds and value < bounds["ge"]:
            sub.fail(f"must be ≥ {bounds['ge']}, got {value!r}")
        if "le" in bounds and value > bounds["le"]:
            sub.fail(f"must be ≤ {bounds['le']}, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            self.fail(
                f"has unknown field(s) {', '.join(unknown)}",
                f"remove or rename them; known fields: {', '.join(sorted(self.seen))}.",
            )


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


def policy_from_dict(data: Any, origin: str = "policy") -> Policy:
    """Validate a JSON-form policy and build a Policy; every error names the field."""
    top = _Reader(data, origin)
    schema = top.get("schema", "str")
    if not schema.startswith(SCHEMA_PREFIX):
        top.fail(f"is not a hetcache policy (schema {schema!r})", f'a policy has "schema": "{SCHEMA}".')
    version_text = schema[len(SCHEMA_PREFIX) :]
    if not version_text.isdigit():
        top.fail(f"has an unreadable schema {schema!r}", f'use "{SCHEMA}".')
    if int(version_text) > SCHEMA_VERSION:
        raise PolicyError(
            f"{origin} uses schema {schema}, newer than this hetcache reads ({SCHEMA}).",
            "upgrade hetcache, or re-export the policy with this version.",
        )
    if int(version_text) < SCHEMA_VERSION:
        top.fail(f"uses an unknown old schema {schema!r}", f"re-export it as {SCHEMA}.")
    name = top.get("name", "str")
    description = top.get("description", "str", "")

    model = None
    m = top.child("model")
    if m is not None:
        model = ModelSpec(
            family=m.get("family", "str"),
            class_name=m.get("class", "str"),
            fingerprint=m.get("fingerprint", "str"),
            architecture=m.get("architecture", "dict"),
        )
        m.finish()

    workload = None
    w = top.child("workload")
    if w is not None:
        workload = WorkloadSpec(
            steps=w.get("steps", "int", ge=1),
            height=w.get("height", "int", None, ge=1),
            width=w.get("width", "int", None, ge=1),
            num_frames=w.get("num_frames", "int", None, ge=1),
            guidance_scale=w.get("guidance_scale", "float", None, ge=0),
            scheduler=w.get("scheduler", "str", None),
            name=w.get("name", "str", None),
        )
        w.finish()

    s = top.child("step_plan") or _Reader({}, origin, "step_plan")
    defaults = StepPlanSpec()
    step_plan = StepPlanSpec(
        rule=s.get("rule", "choice", defaults.rule, choices=PLAN_RULES),
        reuse_threshold=s.get("reuse_threshold", "float", defaults.reuse_threshold, ge=0.0),
        full_threshold=s.get("full_threshold", "float", defaults.full_threshold, ge=0.0),
        warmup_steps=s.get("warmup_steps", "int", defaults.warmup_steps, ge=1),
        final_full_steps=s.get("final_full_steps", "int", defaults.final_full_steps, ge=0),
        polynomial=s.get("polynomial", "floats", None),
        plan=s.get("plan", "str", None),
    )
    if step_plan.full_threshold < step_plan.reuse_threshold:
        s.fail(
            f"has full_threshold {step_plan.full_threshold} below reuse_threshold {step_plan.reuse_threshold}",
            "full_threshold must be ≥ reuse_threshold (a step is REUSE below the first, PARTIAL below the second).",
        )
    if step_plan.plan is not None:
        try:
            check_plan_string(step_plan.plan, f"{origin}: step_plan.plan")
        except PolicyError as exc:
            raise PolicyError(exc.what, exc.fix) from None
        if workload is not None and len(step_plan.plan) != workload.steps:
            s.fail(
                f"has a plan of {len(step_plan.plan)} steps but workload.steps is {workload.steps}",
                "make the plan one letter per denoising step.",
            )
    if step_plan.rule == "explicit" and step_plan.plan is None:
        s.fail('has rule "explicit" but no plan', 'add "plan": "FF…" or use rule "accumulated_change".')
    s.finish()

    t = top.child("tokens") or _Reader({}, origin, "tokens")
    d = TokenSpec()
    tokens = TokenSpec(
        mask_threshold=t.get("mask_threshold", "float", d.mask_threshold, ge=0.0, le=0.999),
        margin_width=t.get("margin_width", "int", d.margin_width, ge=0),
        margin_frames=t.get("margin_frames", "int", d.margin_frames, ge=0),
        margin_ratio=t.get("margin_ratio", "float", d.margin_ratio, ge=0.0, le=1.0),
        context_ratio=t.get("context_ratio", "float", d.context_ratio, ge=0.0, le=1.0),
        selection=t.get("selection", "choice", d.selection, choices=SELECTIONS),
        clusters=t.get("clusters", "int", d.clusters, ge=1),
        selection_layer=t.get("selection_layer", "int", d.selection_layer),
        skip_fill=t.get("skip_fill", "choice", d.skip_fill, choices=SKIP_FILLS),
        seed=t.get("seed", "int", d.seed),
    )
    t.finish()

    la = top.child("layers") or _Reader({}, origin, "layers")
    layers = LayerSpec(
        partial_blocks=la.get("partial_blocks", "ints", None),
        partial_vace_blocks=la.get("partial_vace_blocks", "ints", None),
    )
    la.finish()
    if model is not None:
        n_layers = model.architecture.get("num_layers")
        n_vace = len(model.architecture.get("vace_layers") or [])
        for key, values, limit in (
            ("partial_blocks", layers.partial_blocks, n_layers),
            ("partial_vace_blocks", layers.partial_vace_blocks, n_vace),
        ):
            if values and isinstance(limit, int) and max(values) >= limit:
                la.fail(f"{key} holds index {max(values)} but the model has {limit} such blocks")

    c = top.child("cache") or _Reader({}, origin, "cache")
    cache = CacheSpec(
        dtype=c.get("dtype", "choice", "auto", choices=CACHE_DTYPES),
        offload=c.get("offload", "bool", False),
    )
    c.finish()
    provenance = top.get("provenance", "dict", {})
    top.finish()
    return Policy(
        name=name,
        description=description,
        model=model,
        workload=workload,
        step_plan=step_plan,
        tokens=tokens,
        layers=layers,
        cache=cache,
        provenance=dict(provenance),
    )


_SECTIONS = {"step_plan": StepPlanSpec, "tokens": TokenSpec, "layers": LayerSpec, "cache": CacheSpec}


def policy_with(policy: Policy, **changes: Any) -> Policy:
    """Copy of `policy` with fields changed by name, wherever they sit in the nesting (validated again)."""
    data = policy.to_dict()
    for key, value in changes.items():
        if key == "workload":
            data["workload"] = _drop_none(dataclasses.asdict(value)) if isinstance(value, WorkloadSpec) else value
            continue
        if key == "model":
            data["model"] = Policy(name="", model=value).to_dict()["model"] if isinstance(value, ModelSpec) else value
            continue
        if key in data and key not in _SECTIONS:
            data[key] = _jsonable_value(value)
            continue
        for section, cls in _SECTIONS.items():
            if key in {f.name for f in dataclasses.fields(cls)}:
                data[section][key] = _jsonable_value(value)
                break
        else:
            raise PolicyError(f"unknown policy field {key!r}.", "see hetcache.policy for the field names.")
    return policy_from_dict(data, origin=f"policy '{policy.name}'")


def _jsonable_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _jsonable_value(v) for k, v in d.items()}


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def model_spec_from_fingerprint(fp: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from `fingerprint.model_fingerprint(model)`."""
    return ModelSpec(fp["family"], fp["class"], fp["fingerprint"], dict(fp["architecture"]))
