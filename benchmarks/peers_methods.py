"""The rows of the peers benchmark: each caching method, its operating points, and how it attaches to a pipeline.

A `Point` is one method at one setting. `attached(point, session, steps_sessions, clip)` hooks it onto the
session's pipeline for one generation of the clip and yields a `Probe` whose `flops()` reads what was computed
afterwards: the engine's stats for hetcache rows (attached as every cached run of the workload is:
`LoadedWorkload.attach`), and for every other row the executed attention / FFN / VACE modules (forward pre-hooks on
modules that only run when their block really computes) times `hetcache.cost.CostModel`'s analytic FLOPs per module.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import os
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hetcache import plan as step_plan
from hetcache.cost import CostModel
from hetcache.plan import plan_from_changes, rescale
from hetcache.policy import LayerSpec, Policy, StepPlanSpec, TokenSpec, load_policy
from hetcache.workloads.execute import LoadedWorkload

UNCACHED = "uncached"
FEWER_STEPS = "fewer steps"
TIMESTEP_ONLY = "timestep-only reuse (TeaCache-style)"
FBC = "diffusers FirstBlockCache"
MAGCACHE = "diffusers MagCache"
TAYLORSEER = "diffusers TaylorSeer"
PAB = "diffusers PyramidAttentionBroadcast"
DBCACHE = "cache-dit DBCache"
HETCACHE_PAPER = "HetCache, paper settings"
# the paper's own evaluation: the reference code pastes the source back (hard mask) and scores the whole frame
HETCACHE_PAPER_EVAL = "HetCache, paper settings, paper's evaluation (paste, whole frame)"
PAPER_EVAL_CONTRACT = "paste"
HETCACHE_TUNED = "HetCache, tuned"
SHORT_NAMES = {
    "uncached": UNCACHED,
    "steps": FEWER_STEPS,
    "timestep": TIMESTEP_ONLY,
    "fbc": FBC,
    "magcache": MAGCACHE,
    "taylorseer": TAYLORSEER,
    "pab": PAB,
    "dbcache": DBCACHE,
    "paper": HETCACHE_PAPER,
    "paper-eval": HETCACHE_PAPER_EVAL,
    "tuned": HETCACHE_TUNED,
}
METHODS = tuple(SHORT_NAMES.values())

COST_TARGETS = (0.7, 0.5, 0.35)  # cost fractions the analytic knobs (steps, timestep-only threshold) are set to
# Knobs of the data-dependent methods: chosen to span roughly the same cost range on the reference workload.
FBC_THRESHOLDS = (0.1, 0.2, 0.3)
MAG_POINTS = ((0.02, 2), (0.06, 3), (0.12, 4))  # (threshold, max consecutive skips K)
TAYLOR_INTERVALS = (2, 3, 5)
PAB_RANGES = (2, 3, 4)
DBCACHE_THRESHOLDS = (0.05, 0.12, 0.24)
TAYLOR_PATTERN = r"blocks\.\d+"  # diffusers' default patterns ("^blocks.*attn") match no Wan module
NEVER = 1e9  # a threshold no change exceeds: the method reuses whenever it is allowed to


@dataclass(frozen=True)
class Point:
    """One method at one operating point."""

    method: str
    setting: str
    kind: str  # uncached | steps | hetcache | diffusers | cachedit
    steps: int | None = None
    policy: Policy | None = None
    config: Callable[[Callable[[], float]], Any] | None = None  # clock -> cache config
    forced: Callable[[Callable[[], float]], Any] | None = None  # config that caches the 2nd call (replay check)
    params: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None  # why the row cannot run here (then it is reported, not run)
    notes: tuple[str, ...] = ()
    contract: str | None = None  # an editing contract of its own (its reference too), else the benchmark's

    @property
    def key(self) -> str:
        return f"{self.method} [{self.setting}]"


# ---------------------------------------------------------------------------------------------------------
# FLOPs of rows without an engine: executed modules x analytic cost


class FlopCounter:
    """Counts the FLOPs a transformer really executes: pre-hooks on modules that run only when computed."""

    def __init__(self, transformer: torch.nn.Module):
        self.cost = CostModel.from_model(transformer)
        self.patch = tuple(transformer.config.patch_size)
        self.tokens = self.text_len = self.batch = 0
        self.flops = 0.0
        self.forwards = 0
        self.handles = [transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True)]
        vace_blocks = list(getattr(transformer, "vace_blocks", []))
        for block in list(transformer.blocks) + vace_blocks:
            self._watch(block.attn1.to_q, "self_attention")
            self._watch(block.attn2.to_q, "cross_attention")
            self._watch(block.ffn.net[0].proj, "ffn")
        for index, block in enumerate(vace_blocks):
            if index == 0:
                self._watch(block.proj_in, "vace_proj")
            self._watch(block.proj_out, "vace_proj")

    def _on_forward(self, module, args, kwargs) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        self.batch = hidden.shape[0]
        self.tokens = math.prod(s // p for s, p in zip(hidden.shape[2:], self.patch, strict=True))
        self.text_len = text.shape[1]
        self.forwards += 1
        self.flops += self.cost.embed_head(self.tokens, self.text_len, self.cost.num_vace_layers > 0) * self.batch

    def _watch(self, module: torch.nn.Module, part: str) -> None:
        def hook(mod, args):
            n = self.tokens
            if part == "vace_proj":
                value = 2.0 * n * self.cost.dim * self.cost.dim
            else:
                value = self.cost.block(n, n, self.text_len)[part]
            self.flops += value * self.batch

        self.handles.append(module.register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------------------
# attaching a point for one generation


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what cache-dit prints (its log level is set from the environment when it is first imported)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@dataclass
class Probe:
    """What a generation under a point reads afterwards: the session to generate with, and its FLOPs."""

    session: LoadedWorkload
    counter: FlopCounter | None = None
    handle: Any = None

    def flops(self) -> float:
        if self.handle is not None:
            return float(self.handle.stats()["flops"])
        return float(self.counter.flops)

    def stats(self) -> dict[str, Any]:
        return self.handle.stats() if self.handle is not None else {}


def pipeline_clock(pipe) -> Callable[[], float]:
    """The pipeline's current timestep as a float (what PyramidAttentionBroadcast asks for)."""

    def clock() -> float:
        t = pipe.current_timestep
        return float(t.flatten()[0]) if torch.is_tensor(t) else float(t if t is not None else 1000.0)

    return clock


def cachedit_available() -> str | None:
    """None when cache-dit imports, else the reason the row is skipped."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        return "not installed (pip install 'hetcache[cachedit]')"
    return None


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cachedit_twin(transformer: torch.nn.Module) -> torch.nn.Module:
    """A copy of the transformer for cache-dit, made once: cache-dit patches the forward of the model it is given
    (its WanVACE functor) and `disable_cache` does not undo that, so it never touches the model the other rows use."""
    if transformer not in _TWINS:
        _TWINS[transformer] = copy.deepcopy(transformer)
    return _TWINS[transformer]


@contextlib.contextmanager
def attached(point: Point, session: LoadedWorkload, steps_sessions: dict[int, LoadedWorkload], clip) -> Iterator[Probe]:
    """Hook `point` onto the session's pipeline for one run of `clip`; always unhooked after."""
    transformer = session.transformer
    if point.kind == "hetcache":
        with session.attach(clip, point.policy, strict=False) as handle:
            yield Probe(session, handle=handle)
        return
    target = session
    if point.kind == "steps":
        if point.steps not in steps_sessions:
            steps_sessions[point.steps] = LoadedWorkload(session.workload.replace(steps=point.steps), pipe=session.pipe)
        target = steps_sessions[point.steps]
    counter = FlopCounter(transformer)
    try:
        if point.kind == "diffusers":
            transformer.enable_cache(point.config(pipeline_clock(session.pipe)))
            try:
                yield Probe(target, counter=counter)
            finally:
                transformer.disable_cache()
        elif point.kind == "cachedit":
            import cache_dit

            counter.remove()
            session.pipe.transformer = cachedit_twin(transformer)
            counter = FlopCounter(session.pipe.transformer)
            try:
                with quiet():
                    cache_dit.enable_cache(session.pipe, cache_config=point.config(pipeline_clock(session.pipe)))
                yield Probe(target, counter=counter)
            finally:
                with quiet():
                    cache_dit.disable_cache(session.pipe)
                session.pipe.transformer = transformer
        else:
            yield Probe(target, counter=counter)
    finally:
        counter.remove()


# ---------------------------------------------------------------------------------------------------------
# operating points


def step_changes(session: LoadedWorkload, polynomial: tuple[float, ...] | None = None) -> list[float]:
    """The rescaled timestep-modulation change into each step (what hetcache's step plan accumulates)."""
    return rescale(step_plan.step_changes(session.transformer, session.timesteps()), polynomial)


def timestep_only_spec(threshold: float, warmup: int = 2, final: int = 1) -> StepPlanSpec:
    """A plan rule without PARTIAL steps: the full threshold equals the reuse threshold."""
    return StepPlanSpec(
        reuse_threshold=threshold, full_threshold=threshold, warmup_steps=warmup, final_full_steps=final
    )


def timestep_only_thresholds(changes: list[float], targets: tuple[float, ...]) -> list[float]:
    """Thresholds whose share of FULL steps is closest to each target (one per distinct plan)."""
    steps = len(changes) + 1
    candidates = []
    for threshold in np.geomspace(1e-4, max(1e-3, 4 * sum(changes)), 240):
        plan = plan_from_changes(changes, timestep_only_spec(float(threshold)))
        candidates.append((float(threshold), plan, plan.count("F") / steps))
    chosen: dict[str, float] = {}
    for target in targets:
        threshold, plan, _ = min(candidates, key=lambda c: (abs(c[2] - target), c[0]))
        chosen.setdefault(plan, threshold)
    return sorted(chosen.values())


def timestep_only_policy(spec: StepPlanSpec) -> Policy:
    """Hetcache with REUSE steps only: no token rules matter, no layer runs partial."""
    return Policy(
        name=f"timestep-only-{spec.reuse_threshold:.4g}",
        step_plan=spec,
        tokens=TokenSpec(margin_width=0, margin_ratio=0.0, context_ratio=0.0, selection="stride"),
        layers=LayerSpec(partial_blocks=(), partial_vace_blocks=()),
    )


def translate_layers(policy: Policy, transformer: torch.nn.Module) -> Policy:
    """A policy's layer schedule mapped onto a model of another depth: each block takes the setting of the block at
    the same relative depth (the paper policy's prefix of blocks becomes the same fraction of this model's blocks)."""
    arch = policy.model.architecture if policy.model is not None else {}
    num_layers = int(transformer.config.num_layers)
    num_vace = len(getattr(transformer, "vace_blocks", []))
    src_layers = int(arch.get("num_layers", num_layers))
    src_vace = len(arch.get("vace_layers", [])) or num_vace

    def scale(blocks: tuple[int, ...] | None, source: int, target: int) -> tuple[int, ...] | None:
        if blocks is None or source == target:
            return blocks
        chosen = set(blocks)
        return tuple(j for j in range(target) if math.floor(j * source / target) in chosen)

    if policy.tokens.selection_layer >= 0 and src_layers != num_layers:
        policy = policy.replace(selection_layer=-1)
    return policy.replace(
        partial_blocks=scale(policy.layers.partial_blocks, src_layers, num_layers),
        partial_vace_blocks=scale(policy.layers.partial_vace_blocks, src_vace, num_vace),
    )


def paper_policy(transformer: torch.nn.Module) -> Policy:
    """The shipped paper-settings policy with its partial-block share translated as the tuner does it."""
    from hetcache.tuner.space import PAPER_POLICY, paper_params

    paper = load_policy(PAPER_POLICY)
    count = paper_params(int(transformer.config.num_layers))["partial_blocks"]
    translated = translate_layers(paper, transformer)
    return translated.replace(partial_blocks=tuple(range(count)))


def _diffusers_points(steps: int) -> list[Point]:
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    points = [
        Point(
            FBC,
            f"threshold={t:g}",
            "diffusers",
            config=lambda clock, t=t: FirstBlockCacheConfig(threshold=t),
            forced=lambda clock: FirstBlockCacheConfig(threshold=NEVER),
        )
        for t in FBC_THRESHOLDS
    ]
    mag_forced = lambda clock: MagCacheConfig(  # noqa: E731
        threshold=NEVER, max_skip_steps=steps, retention_ratio=0.0, num_inference_steps=steps, mag_ratios=[1.0] * steps
    )
    points += [
        Point(MAGCACHE, f"threshold={t:g}, K={k}", "diffusers", forced=mag_forced, params={"threshold": t, "k": k})
        for t, k in MAG_POINTS
    ]
    points += [
        Point(
            TAYLORSEER,
            f"interval={n}, order 1",
            "diffusers",
            config=lambda clock, n=n: TaylorSeerCacheConfig(
                cache_interval=n,
                disable_cache_before_step=2,
                max_order=1,
                taylor_factors_dtype=torch.float32,
                cache_identifiers=[TAYLOR_PATTERN],
            ),
            forced=lambda clock: TaylorSeerCacheConfig(
                cache_interval=100,
                disable_cache_before_step=1,
                max_order=1,
                taylor_factors_dtype=torch.float32,
                cache_identifiers=[TAYLOR_PATTERN],
            ),
            params={
                "default_patterns": lambda clock: TaylorSeerCacheConfig(
                    cache_interval=100, disable_cache_before_step=1, max_order=1, taylor_factors_dtype=torch.float32
                )
            },
        )
        for n in TAYLOR_INTERVALS
    ]
    points += [
        Point(
            PAB,
            f"self-attn every {k}, cross every {2 * k}",
            "diffusers",
            config=lambda clock, k=k: PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=k,
                cross_attention_block_skip_range=2 * k,
                spatial_attention_timestep_skip_range=(100, 900),
                cross_attention_timestep_skip_range=(100, 900),
                current_timestep_callback=clock,
            ),
            forced=lambda clock: PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2,
                cross_attention_block_skip_range=2,
                spatial_attention_timestep_skip_range=(-1, 1001),
                cross_attention_timestep_skip_range=(-1, 1001),
                current_timestep_callback=clock,
            ),
        )
        for k in PAB_RANGES
    ]
    return points


def _cachedit_points(steps: int) -> list[Point]:
    reason = cachedit_available()

    def config(threshold: float, warmup: int = 2):
        def make(clock):
            from cache_dit import DBCacheConfig

            return DBCacheConfig(
                Fn_compute_blocks=1,
                Bn_compute_blocks=0,
                residual_diff_threshold=threshold,
                max_warmup_steps=warmup,
                num_inference_steps=steps,
            )

        return make

    return [
        Point(
            DBCACHE,
            f"F1B0, threshold={t:g}",
            "cachedit",
            config=config(t),
            forced=config(NEVER, warmup=1),
            unavailable=reason,
        )
        for t in DBCACHE_THRESHOLDS
    ]


def magcache_ratios(session: LoadedWorkload, clip, steps: int) -> list[float]:
    """Calibrate MagCache the way diffusers documents it: one run with `calibrate=True`, read the printed ratios.

    diffusers keeps one state per CFG branch and prints one list per branch; the config takes one list, so the
    branches' ratios are averaged step by step.
    """
    from diffusers.hooks import MagCacheConfig

    transformer = session.transformer
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            session.generate(clip, decode=False)
    finally:
        transformer.disable_cache()
    lists = [[float(v) for v in m.split(",")] for m in re.findall(r"^\[([^\]]*)\]$", buffer.getvalue(), re.M)]
    lists = [values for values in lists if len(values) == steps]
    if not lists:
        raise RuntimeError("MagCache calibration printed no ratios; the diffusers MagCache output format changed.")
    return [float(v) for v in np.mean(np.asarray(lists), axis=0)]


def with_magcache_ratios(points: list[Point], ratios: list[float], steps: int) -> list[Point]:
    """Give the MagCache points their calibrated ratios."""
    from diffusers.hooks import MagCacheConfig

    out = []
    for point in points:
        if point.method == MAGCACHE:
            point = dataclasses.replace(
                point,
                config=lambda clock, t=point.params["threshold"], k=point.params["k"]: MagCacheConfig(
                    threshold=t, max_skip_steps=k, retention_ratio=0.2, num_inference_steps=steps, mag_ratios=ratios
                ),
                notes=("ratios from calibrate=True on the first clip, mean of the cond/uncond lists",),
            )
        out.append(point)
    return out


def build_points(
    session: LoadedWorkload, tuned: list[tuple[str, Policy]], methods: set[str] | None = None
) -> list[Point]:
    """Every row at its operating points (MagCache still without ratios: see `with_magcache_ratios`)."""
    steps = session.workload.steps
    transformer = session.transformer
    points = [Point(UNCACHED, f"{steps} steps", "uncached")]
    fewer = sorted({max(2, round(steps * f)) for f in COST_TARGETS if round(steps * f) < steps}, reverse=True)
    points += [Point(FEWER_STEPS, f"{k} steps", "steps", steps=k) for k in fewer]
    for threshold in timestep_only_thresholds(step_changes(session), COST_TARGETS):
        policy = timestep_only_policy(timestep_only_spec(threshold))
        points.append(Point(TIMESTEP_ONLY, f"threshold={threshold:.3g}", "hetcache", policy=policy))
    points += _diffusers_points(steps)
    points += _cachedit_points(steps)
    paper = paper_policy(transformer)
    points.append(Point(HETCACHE_PAPER, "wan21-vace-1.3b-paper", "hetcache", policy=paper))
    points.append(
        Point(
            HETCACHE_PAPER_EVAL,
            f"wan21-vace-1.3b-paper, contract {PAPER_EVAL_CONTRACT}",
            "hetcache",
            policy=paper,
            contract=PAPER_EVAL_CONTRACT,
            notes=(
                "scored as the HetCache reference code scores: its output and the uncached one pasted back onto the "
                "source, whole-frame PSNR (a function of the mask's area); psnr_vs_source: against the source "
                "clip, the reference code's reference",
            ),
        )
    )
    for label, policy in tuned:
        points.append(Point(HETCACHE_TUNED, label, "hetcache", policy=translate_layers(policy, transformer)))
    if methods is not None:
        points = [p for p in points if p.method in methods or p.method == UNCACHED]
    return points
