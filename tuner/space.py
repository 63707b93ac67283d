"""The search space: Optuna parameters → a hetcache Policy, and the warm-start points translated to this model.

The space is fixed when the study is created and stored in its user attrs, so every worker and every resume samples
the same distributions: the reuse-threshold range comes from this model's (rescaled) timestep-change curve, the
layer schedule is "the k main blocks with the least context drift" (profile) or the first k blocks (no profile),
plus VACE blocks on or off.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from hetcache.plan import rescale, step_changes
from hetcache.policy import (
    CacheSpec,
    LayerSpec,
    ModelSpec,
    Policy,
    StepPlanSpec,
    TokenSpec,
    WorkloadSpec,
    load_policy,
    policy_from_dict,
)

from .profile_input import ProfileHints

SELECTIONS = ("stride", "kmeans", "attention", "kmeans_attention")
SKIP_FILLS = ("residual", "output")
CACHE_DTYPES = ("auto", "bfloat16", "float16")
PAPER_POLICY = "wan21-vace-1.3b-paper"
FULL_RATIO = (1.0, 4.0)
MARGIN_RATIO = (0.0, 1.0)
CONTEXT_RATIO = (0.0, 0.5)
CLUSTERS = (2, 32)


@dataclass(frozen=True)
class SearchSpace:
    """Bounds and orders of every parameter; `to_dict` / `from_dict` round-trip through study user attrs."""

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
        config = transformer.config
        steps = session.workload.steps
        polynomial = hints.polynomial if hints is not None else None
        changes = rescale(step_changes(transformer, session.timesteps()), polynomial)
        positive = [c for c in changes if c > 0] or [1e-3]
        low = max(1e-4, 0.5 * min(positive))
        high = max(2.0 * low, 3.0 * statistics.median(positive))
        num_layers = int(config.num_layers)
        num_vace = len(getattr(transformer, "vace_blocks", []))
        if hints is not None and len(hints.main_order) == num_layers:
            main_order, vace_order, source = hints.main_order, hints.vace_order, f"profile {hints.path}"
        else:
            main_order, vace_order, source = tuple(range(num_layers)), tuple(range(num_vace)), "prefix"
        if len(vace_order) != num_vace:
            vace_order = tuple(range(num_vace))
        pixels_per_token = getattr(session.pipe, "vae_scale_factor_spatial", 8) * int(config.patch_size[1])
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

    # -- sampling -------------------------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter (the space is fixed, so multivariate TPE models it jointly)."""
        return {
            "reuse_threshold": trial.suggest_float("reuse_threshold", *self.reuse_threshold, log=True),
            "full_ratio": trial.suggest_float("full_ratio", *FULL_RATIO),
            "warmup_steps": trial.suggest_int("warmup_steps", *self.warmup_steps),
            "final_full_steps": trial.suggest_int("final_full_steps", *self.final_full_steps),
            "margin_width": trial.suggest_int("margin_width", *self.margin_width),
            "margin_ratio": trial.suggest_float("margin_ratio", *MARGIN_RATIO),
            "context_ratio": trial.suggest_float("context_ratio", *CONTEXT_RATIO),
            "selection": trial.suggest_categorical("selection", SELECTIONS),
            "clusters": trial.suggest_int("clusters", *CLUSTERS, log=True),
            "skip_fill": trial.suggest_categorical("skip_fill", SKIP_FILLS),
            "partial_blocks": trial.suggest_int("partial_blocks", 0, len(self.main_order)),
            "partial_vace": trial.suggest_categorical("partial_vace", (False, True)),
            "cache_dtype": trial.suggest_categorical("cache_dtype", CACHE_DTYPES),
        }

    def clamp(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bring a warm-start point inside the space (values of another model may lie outside it)."""
        out = dict(params)
        out["reuse_threshold"] = min(max(out["reuse_threshold"], self.reuse_threshold[0]), self.reuse_threshold[1])
        out["full_ratio"] = min(max(out["full_ratio"], FULL_RATIO[0]), FULL_RATIO[1])
        for key in ("warmup_steps", "final_full_steps", "margin_width"):
            low, high = getattr(self, key)
            out[key] = int(min(max(out[key], low), high))
        out["margin_ratio"] = min(max(out["margin_ratio"], MARGIN_RATIO[0]), MARGIN_RATIO[1])
        out["context_ratio"] = min(max(out["context_ratio"], CONTEXT_RATIO[0]), CONTEXT_RATIO[1])
        out["clusters"] = int(min(max(out["clusters"], CLUSTERS[0]), CLUSTERS[1]))
        out["partial_blocks"] = int(min(max(out["partial_blocks"], 0), len(self.main_order)))
        out["partial_vace"] = bool(out["partial_vace"]) and bool(self.vace_order)
        return out

    # -- policies -------------------------------------------------------------------------------------------
    def policy(
        self, params: dict[str, Any], name: str, model: ModelSpec, workload: WorkloadSpec, description: str = ""
    ) -> Policy:
        """The Policy a parameter set stands for."""
        reuse = float(params["reuse_threshold"])
        policy = Policy(
            name=name,
            description=description,
            model=model,
            workload=workload,
            step_plan=StepPlanSpec(
                rule="accumulated_change",
                reuse_threshold=reuse,
                full_threshold=reuse * float(params["full_ratio"]),
                warmup_steps=int(params["warmup_steps"]),
                final_full_steps=int(params["final_full_steps"]),
                polynomial=self.polynomial,
            ),
            tokens=TokenSpec(
                margin_width=int(params["margin_width"]),
                margin_ratio=float(params["margin_ratio"]),
                context_ratio=float(params["context_ratio"]),
                selection=str(params["selection"]),
                clusters=int(params["clusters"]),
                skip_fill=str(params["skip_fill"]),
            ),
            layers=LayerSpec(
                partial_blocks=tuple(sorted(self.main_order[: int(params["partial_blocks"])])),
                partial_vace_blocks=tuple(sorted(self.vace_order)) if params["partial_vace"] else (),
            ),
            cache=CacheSpec(dtype=str(params["cache_dtype"])),
        )
        return policy_from_dict(policy.to_dict(), origin=f"tuned policy '{name}'")

    # -- warm start -----------------------------------------------------------------------------------------
    def warm_starts(self, hints: ProfileHints | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Named starting points: the paper's settings translated to this model, timestep-only caching, guesses."""
        median = statistics.median([c for c in self.step_changes if c > 0] or [self.reuse_threshold[0]])
        points = [
            ("paper", paper_params(len(self.main_order))),
            (
                "timestep-only",
                {
                    "reuse_threshold": 1.5 * median,
                    "full_ratio": 1.0,
                    "warmup_steps": 2,
                    "final_full_steps": 1,
                    "margin_width": 0,
                    "margin_ratio": 0.0,
                    "context_ratio": 0.0,
                    "selection": "stride",
                    "clusters": 8,
                    "skip_fill": "residual",
                    "partial_blocks": 0,
                    "partial_vace": False,
                    "cache_dtype": "auto",
                },
            ),
            (
                "balanced",
                {
                    "reuse_threshold": 1.2 * median,
                    "full_ratio": 2.5,
                    "warmup_steps": 2,
                    "final_full_steps": 1,
                    "margin_width": 2,
                    "margin_ratio": 0.5,
                    "context_ratio": 0.1,
                    "selection": "kmeans_attention",
                    "clusters": 8,
                    "skip_fill": "residual",
                    "partial_blocks": len(self.main_order),
                    "partial_vace": True,
                    "cache_dtype": "auto",
                },
            ),
        ]
        if hints is not None:
            main_names = {f"blocks.{i}" for i in self.main_order}
            quiet = [n for n in hints.least_drifting if n in main_names]
            k = len(quiet) or max(1, len(self.main_order) // 2)
            points.append(
                (
                    "profile-quiet-blocks",
                    {
                        "reuse_threshold": median,
                        "full_ratio": 2.0,
                        "warmup_steps": 2,
                        "final_full_steps": 1,
                        "margin_width": 2,
                        "margin_ratio": 0.5,
                        "context_ratio": 0.1,
                        "selection": "kmeans_attention",
                        "clusters": 8,
                        "skip_fill": "residual",
                        "partial_blocks": k,
                        "partial_vace": False,
                        "cache_dtype": "auto",
                    },
                )
            )
            points.append(
                (
                    "profile-all-blocks-attention",
                    {
                        "reuse_threshold": 0.7 * median,
                        "full_ratio": 3.0,
                        "warmup_steps": 2,
                        "final_full_steps": 1,
                        "margin_width": 3,
                        "margin_ratio": 0.6,
                        "context_ratio": 0.2,
                        "selection": "attention",
                        "clusters": 8,
                        "skip_fill": "residual",
                        "partial_blocks": len(self.main_order),
                        "partial_vace": True,
                        "cache_dtype": "auto",
                    },
                )
            )
        return [(label, self.clamp(params)) for label, params in points]


def paper_params(num_layers: int) -> dict[str, Any]:
    """The shipped paper-settings policy as parameters, its partial-block fraction scaled to `num_layers`."""
    paper = load_policy(PAPER_POLICY)
    paper_layers = int(paper.model.architecture["num_layers"]) if paper.model else 30
    blocks = paper.layers.partial_blocks
    fraction = (len(blocks) if blocks is not None else paper_layers) / paper_layers
    spec, tokens = paper.step_plan, paper.tokens
    return {
        "reuse_threshold": spec.reuse_threshold,
        "full_ratio": spec.full_threshold / spec.reuse_threshold if spec.reuse_threshold > 0 else 1.0,
        "warmup_steps": spec.warmup_steps,
        "final_full_steps": spec.final_full_steps,
        "margin_width": tokens.margin_width,
        "margin_ratio": tokens.margin_ratio,
        "context_ratio": tokens.context_ratio,
        "selection": tokens.selection,
        "clusters": tokens.clusters,
        "skip_fill": tokens.skip_fill,
        "partial_blocks": math.floor(fraction * num_layers + 0.5),
        "partial_vace": bool(paper.layers.partial_vace_blocks),
        "cache_dtype": paper.cache.dtype,
    }


def behaviour_key(policy: Policy, plan: str) -> str:
    """What a policy does on this workload: two policies with the same key give the same outputs.

    Thresholds matter only through the resolved plan; token and layer settings only when the plan has PARTIAL steps;
    clusters only for k-means selections.
    """
    parts = [f"plan={plan}", f"cache={policy.cache.dtype}"]
    if "P" in plan:
        t, la = policy.tokens, policy.layers
        parts += [
            f"margin={t.margin_width}/{t.margin_ratio:.6g}",
            f"context={t.context_ratio:.6g}/{t.selection}",
            f"fill={t.skip_fill}",
            f"blocks={list(la.partial_blocks or ())}",
            f"vace={list(la.partial_vace_blocks or ())}",
        ]
        if t.selection in ("kmeans", "kmeans_attention") and t.context_ratio > 0:
            parts.append(f"clusters={t.clusters}")
    return ";".join(parts)
