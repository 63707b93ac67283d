"""The search space: a table of parameters (`PARAMS`) → a hetcache Policy, and warm-start points on this model.

Each `Param` says once how it is sampled (kind, bounds or choices, log scale), which policy field it sets, its
neutral value and how a point from elsewhere is brought inside it; `suggest`, `clamp`, `policy`, `paper_params`
and the warm starts all walk that table. The per-model bounds are fixed when the study is created and stored in
its user attrs, so every worker and every resume samples the same distributions: the reuse-threshold range comes
from this model's (rescaled) timestep-change curve, the layer schedule is "the k main blocks with the least context
drift" (profile) or the first k blocks (no profile), plus VACE blocks on or off.

A parameter set whose layer schedule has no partial block gets full_threshold = reuse_threshold: a PARTIAL step
that computes every block is a FULL step at the cost of one, so the space never plans one.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from hetcache.dtypes import CACHE_DTYPES
from hetcache.engine.registry import model_shape, pipeline_vae
from hetcache.plan import rescale, step_changes
from hetcache.policy import (
    FORECASTS,
    SELECTIONS,
    SKIP_FILLS,
    ModelSpec,
    Policy,
    StepPlanSpec,
    WorkloadSpec,
    field_value,
    load_policy,
)
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

    def range(self, space: SearchSpace) -> tuple[Any, Any]:
        """(low, high) on this space."""
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
    Param("reuse_threshold", "float", None, bounds="reuse_threshold", log=True, field="reuse_threshold"),
    Param("full_ratio", "float", 1.0, bounds=(1.0, 4.0)),  # full_threshold = reuse_threshold · full_ratio
    Param("warmup_steps", "int", 2, bounds="warmup_steps", field="warmup_steps"),
    Param("final_full_steps", "int", 1, bounds="final_full_steps", field="final_full_steps"),
    Param("margin_width", "int", 0, bounds="margin_width", field="margin_width"),
    Param("margin_ratio", "float", 0.0, bounds=(0.0, 1.0), field="margin_ratio"),
    Param("context_ratio", "float", 0.0, bounds=(0.0, 0.5), field="context_ratio"),
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

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def for_session(cls, session: Any, hints: ProfileHints | None = None) -> SearchSpace:
        """The space for a loaded workload (its model, timesteps and token grid) and an optional profile."""
        transformer = session.transformer
        steps = session.workload.steps
        polynomial = hints.polynomial if hints is not None else None
        changes = rescale(step_changes(transformer, session.timesteps()), polynomial)
        positive = [c for c in changes if c > 0] or [1e-3]
        low = max(1e-4, 0.5 * min(positive))
        high = max(2.0 * low, 3.0 * statistics.median(positive))
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
        self, params: dict[str, Any], name: str, model: ModelSpec, workload: WorkloadSpec, description: str = ""
    ) -> Policy:
        """The Policy a parameter set stands for (validated by the policy schema)."""
        base = Policy(
            name=name,
            description=description,
            model=model,
            workload=workload,
            step_plan=StepPlanSpec(rule="accumulated_change", polynomial=self.polynomial),
        )
        return base.replace(**self.policy_fields(params))

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
