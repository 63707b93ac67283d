"""The search space: a table of parameters (`PARAMS`) → a hetcache Policy, and warm-start points on this model.

Each `Param` says once how it is sampled (kind, bounds or choices, log scale), which policy field it sets, its
neutral value and how a point from elsewhere is brought inside it; `suggest`, `clamp`, `policy`, `paper_params`
and the warm starts all walk that table. The per-model bounds are fixed when the study is created and stored in
its user attrs, so every worker and every resume samples the same distributions: the reuse-threshold range comes
from this model's (rescaled) timestep-change curve and reaches past the threshold that reuses every middle step (so the
front is never capped by the space), the layer schedule is "the k main blocks with the least context
drift" (profile) or the first k blocks (no profile), plus VACE blocks on or off.

A parameter set whose layer schedule has no partial block gets full_threshold = reuse_threshold: a PARTIAL step
that computes every block is a FULL step at the cost of one, so the space never plans one.

`hetcache-tune --space NAME=LOW:HIGH` replaces a numeric parameter's range (`parse_space_ranges`, checked against the
policy schema's bounds before any compute); the ranges given are stored with the study. `SearchSpace.bounds_hit`
says which bounds a point sits on that cap the search (widening them could change what the policy does).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from hetcache.contracts import parse_contract
from hetcache.dtypes import CACHE_DTYPES
from hetcache.engine.registry import model_shape, pipeline_vae
from hetcache.errors import InputError
from hetcache.plan import rescale, step_changes
from hetcache.policy import (
    FORECASTS,
    SECTIONS,
    SELECTIONS,
    SKIP_FILLS,
    ModelSpec,
    Policy,
    StepPlanSpec,
    WorkloadSpec,
    field_value,
    load_policy,
)
from hetcache.policy.rules import rule_of
from hetcache.steps import FULL, PARTIAL

from .profile_input import ProfileHints

PAPER_POLICY = "wan21-vace-1.3b-paper"
# float32 caches are never smaller than "auto" and on a float32 model they are "auto": not worth a trial; the
# cache-only float8 (policy field cache.dtype) saves memory, never FLOPs or time, so the objective cannot want it
TUNED_CACHE_DTYPES = tuple(d for d in CACHE_DTYPES if d != "float32")


@dataclass(frozen=True)
class Param:
    """One tuned parameter: its distribution, the policy field it sets, and its neutral (timestep-only) value.

    bounds: fixed (low, high), or the name of the SearchSpace attribute that holds this model's bounds.
    field: the policy field the value sets as it is (`Policy.replace` name); None for the derived ones
    (full_ratio, partial_blocks, partial_vace), which `SearchSpace.policy_fields` turns into policy fields.
    """

    name: str
    kind: str  # "float", "int" or "choice"
    neutral: Any
    bounds: tuple[float, float] | str | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    field: str | None = None
    domain: tuple[float | None, float | None] = (None, None)  # derived parameters' own limits (no schema field)
    cheaper: str | None = None  # "low" / "high": the side on which a policy computes less (None: neither)

    @property
    def tunable(self) -> bool:
        """Whether `--space` may set its range (numeric; partial_blocks always spans every block)."""
        return self.kind != "choice" and self.name != "partial_blocks"

    def limits(self) -> tuple[float | None, float | None]:
        """The values a range of this parameter may reach: the policy schema's ge / le of its field, else `domain`."""
        if self.field is None:
            return self.domain
        for section in SECTIONS:
            for f in dataclasses.fields(section.cls):
                if f.name == self.field:
                    rule = rule_of(f)
                    return (rule.ge, rule.le)
        return self.domain

    def range(self, space: SearchSpace) -> tuple[Any, Any]:
        """(low, high) on this space (a `--space` range when the study was created with one)."""
        if self.name in space.ranges:
            return tuple(space.ranges[self.name])
        if isinstance(self.bounds, str):
            return tuple(getattr(space, self.bounds))
        return self.bounds

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        low, high = self.range(space)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high), log=self.log)
        return trial.suggest_float(self.name, float(low), float(high), log=self.log)

    def clamp(self, value: Any, space: SearchSpace) -> Any:
        """`value` brought inside the space (a choice it does not offer becomes the neutral value)."""
        if self.kind == "choice":
            return value if value in self.choices else self.neutral
        low, high = self.range(space)
        inside = min(max(value, low), high)
        return int(inside) if self.kind == "int" else float(inside)


PARAMS = (
    Param(
        "reuse_threshold", "float", None, bounds="reuse_threshold", log=True, field="reuse_threshold", cheaper="high"
    ),
    # full_threshold = reuse_threshold · full_ratio
    Param("full_ratio", "float", 1.0, bounds=(1.0, 4.0), domain=(1.0, None), cheaper="high"),
    Param("warmup_steps", "int", 2, bounds="warmup_steps", field="warmup_steps", cheaper="low"),
    Param("final_full_steps", "int", 1, bounds="final_full_steps", field="final_full_steps", cheaper="low"),
    Param("margin_width", "int", 0, bounds="margin_width", field="margin_width", cheaper="low"),
    Param("margin_ratio", "float", 0.0, bounds=(0.0, 1.0), field="margin_ratio", cheaper="low"),
    Param("context_ratio", "float", 0.0, bounds=(0.0, 0.5), field="context_ratio", cheaper="low"),
    Param("selection", "choice", "stride", choices=SELECTIONS, field="selection"),
    Param("clusters", "int", 8, bounds=(2, 32), log=True, field="clusters"),
    Param("skip_fill", "choice", "residual", choices=SKIP_FILLS, field="skip_fill"),
    Param("partial_blocks", "int", 0, bounds="partial_block_count"),  # the first k blocks of main_order
    Param("partial_vace", "choice", False, choices=(False, True)),  # every VACE block, or none
    Param("cache_dtype", "choice", "auto", choices=TUNED_CACHE_DTYPES, field="dtype"),
    Param("refresh_skipped_kv", "choice", False, choices=(False, True), field="refresh_skipped_kv"),
    Param("forecast", "choice", "none", choices=FORECASTS, field="forecast"),
    # skip rows forecast over the whole PARTIAL run (null), at most 2 FULL-step intervals, or not (REUSE only)
    Param("forecast_skip_horizon", "choice", None, choices=(None, 2.0, 0.0), field="forecast_skip_horizon"),
    # a FULL step after at most 4 or 8 PARTIAL ones (the skipped tokens' residuals that stale), or no bound
    Param("max_partial_run", "choice", None, choices=(None, 4, 8), field="max_partial_run"),
)
PARAM_NAMES = tuple(p.name for p in PARAMS)
BY_NAME = {p.name: p for p in PARAMS}
# parameters that change what a policy does only when its plan has PARTIAL steps (`behaviour_key` says the same)
PARTIAL_ONLY = frozenset({"full_ratio", "margin_width", "margin_ratio", "context_ratio", "clusters"})
SATURATION_MARGIN = 1.05  # the reuse-threshold range ends this far past the sum that reuses every middle step
ALL, QUIET = "all", "quiet"  # warm-start values of partial_blocks: every main block, the least drifting ones


@dataclass(frozen=True)
class WarmStart:
    """A named starting point: the reuse threshold as a multiple of the median step change, other values set."""

    label: str
    reuse_scale: float
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    needs_profile: bool = False


TOKEN_LEVEL = {"margin_width": 2, "margin_ratio": 0.5, "context_ratio": 0.1, "selection": "kmeans_attention"}
# the skipped tokens' keys/values refreshed and cached residuals forecast: the cheapest error fixes (docs/method.md)
# (the skip rows not forecast: from the two warm-up FULL steps it misleads long PARTIAL runs, forecast_partial.py)
REFRESHED = {"refresh_skipped_kv": True, "forecast": "linear", "forecast_skip_horizon": 0.0, "partial_vace": True}
# timestep-only plans are a subset of the space: a ladder of them (every other value neutral: step reuse only)
# seeds every study, so that its Pareto front is at least as good as step reuse at every cost
TIMESTEP_LADDER = (1.5, 0.5, 1.0, 2.5)
# the forecast makes step reuse far cheaper in quality (docs/method.md): its ladder reaches to coarser thresholds
FORECAST_LADDER = (1.5, 2.5, 4.0)
WARM_STARTS = (
    WarmStart("timestep-only", TIMESTEP_LADDER[0]),
    WarmStart("balanced", 1.2, {**TOKEN_LEVEL, "full_ratio": 2.5, "partial_blocks": ALL, "partial_vace": True}),
    *(WarmStart(f"timestep-only@{scale:g}x", scale) for scale in TIMESTEP_LADDER[1:]),
    WarmStart("balanced-refreshed", 1.2, {**TOKEN_LEVEL, **REFRESHED, "full_ratio": 2.5, "partial_blocks": ALL}),
    WarmStart("timestep-only-forecast", FORECAST_LADDER[0], {"forecast": "linear"}),
    WarmStart(
        "profile-quiet-blocks", 1.0, {**TOKEN_LEVEL, "full_ratio": 2.0, "partial_blocks": QUIET}, needs_profile=True
    ),
    WarmStart(
        "profile-all-blocks-attention",
        0.7,
        {"full_ratio": 3.0, "margin_width": 3, "margin_ratio": 0.6, "context_ratio": 0.2, "selection": "attention"}
        | {"partial_blocks": ALL, "partial_vace": True},
        needs_profile=True,
    ),
    *(WarmStart(f"timestep-only-forecast@{scale:g}x", scale, {"forecast": "linear"}) for scale in FORECAST_LADDER[1:]),
)


@dataclass(frozen=True)
class SearchSpace:
    """This model's bounds and block orders; `to_dict` / `from_dict` round-trip through study user attrs."""

    steps: int
    reuse_threshold: tuple[float, float]
    warmup_steps: tuple[int, int]
    final_full_steps: tuple[int, int]
    margin_width: tuple[int, int]
    main_order: tuple[int, ...]
    vace_order: tuple[int, ...]
    polynomial: tuple[float, ...] | None
    layer_order_source: str
    step_changes: tuple[float, ...]
    reuse_saturation: float = 0.0  # the accumulated change over every middle step: a threshold above it reuses all
    ranges: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # --space ranges, by parameter

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def for_session(
        cls, session: Any, hints: ProfileHints | None = None, ranges: dict[str, tuple[float, float]] | None = None
    ) -> SearchSpace:
        """The space for a loaded workload (its model, timesteps and token grid) and an optional profile; `ranges`
        (from `--space`) replace the ranges of the parameters they name.

        The reuse threshold reaches past the accumulated change over every middle step (warm-up 1, the last step
        FULL), so the plan that reuses every middle step is in the space: its top is never a cap on the front."""
        transformer = session.transformer
        steps = session.workload.steps
        polynomial = hints.polynomial if hints is not None else None
        changes = rescale(step_changes(transformer, session.timesteps()), polynomial)
        positive = [c for c in changes if c > 0] or [1e-3]
        low = max(1e-4, 0.5 * min(positive))
        saturation = sum(changes[: max(0, steps - 2)])  # change into steps 1 … steps−2, the middle steps
        high = max(2.0 * low, 3.0 * statistics.median(positive), SATURATION_MARGIN * saturation)
        shape = model_shape(transformer)
        num_layers, num_vace = shape.num_layers, shape.num_vace_layers
        if hints is not None and len(hints.main_order) == num_layers:
            main_order, vace_order, source = hints.main_order, hints.vace_order, f"profile {hints.path}"
        else:
            main_order, vace_order, source = tuple(range(num_layers)), tuple(range(num_vace)), "prefix"
        if len(vace_order) != num_vace:
            vace_order = tuple(range(num_vace))
        pixels_per_token = pipeline_vae(session.pipe).spatial * shape.patch[1]
        grid = min(min(clip.frames.shape[1:3]) for clip in session.clips) // pixels_per_token
        return cls(
            steps=steps,
            reuse_threshold=(round(low, 6), round(high, 6)),
            warmup_steps=(1, max(1, min(4, steps // 3))),
            final_full_steps=(0, max(0, min(2, steps // 4))),
            margin_width=(0, max(2, min(8, grid // 2))),
            main_order=tuple(main_order),
            vace_order=tuple(vace_order),
            polynomial=polynomial,
            layer_order_source=source,
            step_changes=tuple(round(c, 6) for c in changes),
            reuse_saturation=round(saturation, 6),
            ranges={name: [low, high] for name, (low, high) in (ranges or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**kwargs)

    @property
    def partial_block_count(self) -> tuple[int, int]:
        """Bounds of `partial_blocks`: how many main blocks (in `main_order`) run partial."""
        return (0, len(self.main_order))

    @property
    def median_change(self) -> float:
        """The median positive step change, the scale of the warm starts' reuse thresholds."""
        return statistics.median([c for c in self.step_changes if c > 0] or [self.reuse_threshold[0]])

    # -- bounds -------------------------------------------------------------------------------------------
    def caps(self, name: str) -> tuple[bool, bool]:
        """Whether the low / high bound of a parameter caps the search: values past it exist and can change what a
        policy does (a bound at the schema's limit, or a reuse threshold past the all-middle-REUSE one, does not)."""
        param = BY_NAME[name]
        low, high = param.range(self)
        floor, ceiling = param.limits()
        caps_low = floor is None or low > floor
        caps_high = ceiling is None or high < ceiling
        if name == "reuse_threshold" and self.reuse_saturation > 0:
            caps_high = high <= self.reuse_saturation
        if name == "warmup_steps":
            caps_low, caps_high = low > 1, caps_high and high < self.steps - 1  # step 0 is FULL anyway
        if name == "final_full_steps":
            caps_low, caps_high = low > 1, caps_high and high < self.steps - 1  # the last step is FULL anyway
        return caps_low, caps_high

    def bounds_hit(self, params: dict[str, Any], plan: str, cheaper: bool = False) -> list[tuple[str, str]]:
        """(parameter, "low" | "high") for each capping bound the point sits on, among the parameters that matter
        for it (token and layer settings only when its plan has PARTIAL steps); with `cheaper`, only the bounds past
        which a policy computes less (those that hold back the fastest point)."""
        hits = []
        for param in PARAMS:
            if not param.tunable or param.name not in params:
                continue
            if param.name in PARTIAL_ONLY and PARTIAL not in plan:
                continue
            if param.name == "clusters" and "kmeans" not in str(params.get("selection")):
                continue
            low, high = param.range(self)
            value = float(params[param.name])
            for side, bound, caps in zip(("low", "high"), (low, high), self.caps(param.name), strict=True):
                if cheaper and side != param.cheaper:
                    continue
                if caps and _near(value, float(bound), float(low), float(high), param):
                    hits.append((param.name, side))
        return hits

    def widen_hint(self, name: str, side: str) -> str:
        """The `--space` flag that widens a parameter's range past the bound `side`, e.g.
        `--space full_ratio=1:8`."""
        param = BY_NAME[name]
        low, high = (float(v) for v in param.range(self))
        floor, ceiling = param.limits()
        if side == "high":
            high = 2.0 * high if high > 0 else 1.0
            if name == "reuse_threshold":
                high = max(high, 2.0 * SATURATION_MARGIN * self.reuse_saturation)
            high = min(high, ceiling) if ceiling is not None else high
        else:
            low = low / 2.0 if param.log else (floor if floor is not None else low - (high - low))
        if param.kind == "int":
            low, high = math.floor(low), math.ceil(high)
        return f"--space {name}={low:g}:{high:g}"

    # -- sampling -------------------------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter (the space is fixed, so multivariate TPE models it jointly)."""
        return {p.name: p.suggest(trial, self) for p in PARAMS}

    def clamp(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bring a point from elsewhere (another model's values, an older space's) inside the space; a parameter it
        lacks takes its neutral value."""
        out = {p.name: p.clamp(params.get(p.name, p.neutral), self) for p in PARAMS}
        out["partial_vace"] = bool(out["partial_vace"]) and bool(self.vace_order)
        return out

    def point(self, **values: Any) -> dict[str, Any]:
        """A full parameter set: the neutral (timestep-only) values with `values` set, clamped into the space."""
        unknown = set(values) - set(PARAM_NAMES)
        if unknown:
            raise KeyError(f"not parameters of the search space: {', '.join(sorted(unknown))}")
        neutral = {p.name: p.neutral for p in PARAMS} | {"reuse_threshold": self.median_change}
        return self.clamp(neutral | values)

    # -- policies -------------------------------------------------------------------------------------------
    def policy_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        """The policy fields a parameter set stands for (by `Policy.replace` name)."""
        by_name = {p.name: p for p in PARAMS}
        fields = {p.field: params[p.name] for p in PARAMS if p.field is not None}
        for name in ("warmup_steps", "final_full_steps", "margin_width", "clusters"):
            fields[by_name[name].field] = int(params[name])
        blocks = tuple(sorted(self.main_order[: int(params["partial_blocks"])]))
        vace = tuple(sorted(self.vace_order)) if params["partial_vace"] else ()
        ratio = float(params["full_ratio"]) if blocks or vace else 1.0  # no partial block: no PARTIAL step
        reuse = float(params["reuse_threshold"])
        return fields | {
            "reuse_threshold": reuse,
            "full_threshold": reuse * ratio,
            "partial_blocks": blocks,
            "partial_vace_blocks": vace,
        }

    def policy(
        self, params: dict[str, Any], name: str, model: ModelSpec, workload: WorkloadSpec | None, description: str = ""
    ) -> Policy:
        """The Policy a parameter set stands for (validated by the policy schema). Under a contract that discards
        output (blend, paste, feather), the discard trim is on: it is exact, so it is not searched."""
        base = Policy(
            name=name,
            description=description,
            model=model,
            workload=workload,
            step_plan=StepPlanSpec(rule="accumulated_change", polynomial=self.polynomial),
        )
        contract = workload.contract if workload is not None else "none"
        trim = parse_contract(contract, "the workload's contract").keeps_source
        return base.replace(**self.policy_fields(params), trim_discarded=trim)

    # -- warm start -----------------------------------------------------------------------------------------
    def warm_starts(self, hints: ProfileHints | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Named starting points, most telling first: the paper's settings translated to this model, the
        timestep-only ladder, token-level guesses (from the profile when there is one)."""
        points = [("paper", self.clamp(paper_params(len(self.main_order))))]
        quiet = self._quiet_blocks(hints)
        for start in WARM_STARTS:
            if start.needs_profile and hints is None:
                continue
            values = dict(start.values)
            values["partial_blocks"] = {ALL: len(self.main_order), QUIET: quiet}.get(
                values.get("partial_blocks"), values.get("partial_blocks", 0)
            )
            points.append((start.label, self.point(reuse_threshold=start.reuse_scale * self.median_change, **values)))
        return points

    def _quiet_blocks(self, hints: ProfileHints | None) -> int:
        """How many main blocks the profile names among the least drifting (half of them without a profile)."""
        main_names = {f"blocks.{i}" for i in self.main_order}
        quiet = [n for n in hints.least_drifting if n in main_names] if hints is not None else []
        return len(quiet) or max(1, len(self.main_order) // 2)


def _near(value: float, bound: float, low: float, high: float, param: Param) -> bool:
    """Whether `value` sits on `bound`: equal for integers, within 1% of the range (its log for log scales)."""
    if param.kind == "int":
        return round(value) == round(bound)
    if param.log and low > 0 and value > 0:
        return abs(math.log(value / bound)) <= 0.01 * max(math.log(high / low), 1e-9)
    return abs(value - bound) <= 0.01 * max(high - low, 1e-12)


def parse_space_ranges(texts: list[str] | None) -> dict[str, tuple[float, float]]:
    """`--space NAME=LOW:HIGH` flags → {name: (low, high)}, each checked against the parameter's limits (the policy
    schema's bounds of its field) before any compute; InputError names the flag and the fix."""
    tunable = [p.name for p in PARAMS if p.tunable]
    out: dict[str, tuple[float, float]] = {}
    for text in texts or []:
        name, _, span = text.partition("=")
        name = name.strip()
        low_text, sep, high_text = span.partition(":")
        if name not in tunable:
            raise InputError(
                f"--space {text}: {name!r} is not a numeric parameter of the search space.",
                f"use one of {', '.join(tunable)}, e.g. --space reuse_threshold=0.01:2.",
            )
        param = BY_NAME[name]
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            low = high = float("nan")
        if not sep or not (math.isfinite(low) and math.isfinite(high)):
            raise InputError(f"--space {text}: the range must be LOW:HIGH numbers.", f"e.g. --space {name}=1:4.")
        if param.kind == "int" and not (low.is_integer() and high.is_integer()):
            raise InputError(f"--space {text}: {name} takes whole numbers.", f"e.g. --space {name}=1:4.")
        if low >= high:
            raise InputError(f"--space {text}: LOW must be below HIGH.", f"e.g. --space {name}={high:g}:{low:g}.")
        floor, ceiling = param.limits()
        if param.log and low <= 0:
            raise InputError(f"--space {text}: {name} is sampled on a log scale, so LOW must be > 0.", "raise LOW.")
        if (floor is not None and low < floor) or (ceiling is not None and high > ceiling):
            shown = f"[{'-inf' if floor is None else f'{floor:g}'}, {'inf' if ceiling is None else f'{ceiling:g}'}]"
            raise InputError(f"--space {text}: {name} must lie in {shown}.", "give a range inside it.")
        if name in out:
            raise InputError(f"--space names {name} twice.", "give each parameter once.")
        out[name] = (int(low), int(high)) if param.kind == "int" else (low, high)
    return out


def paper_params(num_layers: int) -> dict[str, Any]:
    """The shipped paper-settings policy as parameters, its partial-block fraction scaled to `num_layers`."""
    paper = load_policy(PAPER_POLICY)
    paper_layers = int(paper.model.architecture["num_layers"]) if paper.model else 30
    blocks = paper.layers.partial_blocks
    fraction = (len(blocks) if blocks is not None else paper_layers) / paper_layers
    spec = paper.step_plan
    params = {p.name: field_value(paper, p.field) for p in PARAMS if p.field is not None}
    return params | {
        "full_ratio": spec.full_threshold / spec.reuse_threshold if spec.reuse_threshold > 0 else 1.0,
        "partial_blocks": math.floor(fraction * num_layers + 0.5),
        "partial_vace": bool(paper.layers.partial_vace_blocks),
    }


def behaviour_key(policy: Policy, plan: str) -> str:
    """What a policy does on this workload: two policies with the same key give the same outputs.

    Thresholds matter only through the resolved plan; token and layer settings only when the plan has PARTIAL steps;
    clusters only for k-means selections.
    """
    parts = [f"plan={plan}", f"cache={policy.cache.dtype}"]
    if policy.tokens.trim_discarded:  # only when on, so that keys of studies made before the option stay valid
        parts.append("trim")
    if policy.cache.forecast != "none" and set(plan) - {FULL}:  # only when on, as refresh_kv below
        parts.append(f"forecast={policy.cache.forecast}")
    if PARTIAL in plan:
        t, la = policy.tokens, policy.layers
        parts += [
            f"margin={t.margin_width}/{t.margin_ratio:.6g}",
            f"context={t.context_ratio:.6g}/{t.selection}",
            f"fill={t.skip_fill}",
            f"blocks={list(la.partial_blocks or ())}",
            f"vace={list(la.partial_vace_blocks or ())}",
        ]
        if t.needs_features:
            parts.append(f"clusters={t.clusters}")
        if t.refresh_skipped_kv:  # only when on, so that keys of studies made before the option stay valid
            parts.append("refresh_kv")
        if policy.cache.forecast != "none" and policy.cache.forecast_skip_horizon is not None:  # the same
            parts.append(f"skip_horizon={policy.cache.forecast_skip_horizon:g}")
    return ";".join(parts)
