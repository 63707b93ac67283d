"""One trial: build the policy, run it with the engine on every calibration clip, score it against the references.

The engine is `hetcache.engine.apply_hetcache` (never re-implemented here). A trial stops early, and is recorded as a
completed but infeasible trial with `pruned_at_clip`, as soon as the clips seen prove that the budget cannot be met;
completed-infeasible (rather than Optuna's PRUNED state) keeps its constraint values, so TPE learns from it.
Warm starts (the timestep-only ladder among them) are never stopped early: scored on every clip, they can stand on
the Pareto front, which is then at least as good as step reuse alone at every cost.
With `--max-cache-gib`, the memory plan (`hetcache.memory`) sizes each trial's policy first: one whose cache exceeds
the bound is not run at all, but recorded as completed and infeasible with its `max_cache_gib` constraint value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from hetcache.atomic import json_safe
from hetcache.memory import session_cache_gib
from hetcache.metrics import clip_quality, mean_quality, worst_quality
from hetcache.plan import resolve_plan
from hetcache.policy import ModelSpec, Policy, WorkloadSpec

from . import interrupts
from .budget import MAX_CACHE_KEY, Budget
from .recovery import IDENTITY_ATTRS, worker_identity
from .references import ReferenceStore
from .results import CACHE_GIB_ATTR, OVER_MEMORY_ATTR
from .schedule import scheduled_policy
from .space import SearchSpace, behaviour_key

OBJECTIVES = ("flops", "time")
RETIME_EVERY = 5  # with --objective time, a worker re-times the uncached runs before every 5th trial it evaluates
BIG = 1e9  # constraint value for outputs that cannot be scored (NaN / inf); stays JSON-safe in every storage


@dataclass
class Outcome:
    """Everything measured for one policy on the calibration clips (or on those seen before pruning)."""

    speedup_flops: float
    speedup_time: float
    flops_fraction: float
    quality: dict[str, Any]
    quality_worst: dict[str, Any]
    quality_per_clip: dict[str, dict[str, Any]]
    decisions: dict[str, str]
    constraints: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    pruned_at_clip: str | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, objective: str) -> float:
        return self.speedup_time if objective == "time" else self.speedup_flops

    def attrs(self) -> dict[str, Any]:
        """Trial user attrs (pruned_at_clip only when pruned; timing: the seconds the time speedup divides)."""
        out = {
            "speedup_flops": self.speedup_flops,
            "speedup_time": self.speedup_time,
            "flops_fraction": self.flops_fraction,
            "quality": json_safe(self.quality),
            "quality_worst": json_safe(self.quality_worst),
            "quality_per_clip": json_safe(self.quality_per_clip),
            "decisions": self.decisions,
            "timing": self.seconds,
        }
        if self.pruned_at_clip is not None:
            out["pruned_at_clip"] = self.pruned_at_clip
        if self.notes:
            out["notes"] = self.notes
        return out


class Evaluator:
    """Runs policies on a session's clips and measures speedup and quality against the stored references.

    The time speedup divides this worker's uncached time (median of its recent timings, re-timed every
    RETIME_EVERY trials with --objective time) by the trial's cached denoising time; both are recorded.
    """

    def __init__(self, session: Any, references: ReferenceStore, budget: Budget, objective: str, lpips: Any = None):
        self.session = session
        self.references = references
        self.budget = budget
        self.objective = objective
        self.lpips = lpips
        self.evaluated = 0

    def plan(self, policy: Policy) -> str:
        """The per-step plan the engine will follow on this workload (hetcache.plan, as the engine computes it)."""
        return resolve_plan(self.session.transformer, self.session.timesteps(), policy.step_plan)

    def cache_gib(self, policy: Policy, plan: str) -> float:
        """Device GiB hetcache holds for `policy` following `plan` (at the memory bound's size, if it names one)."""
        planned = policy.replace(plan=plan)
        memory = self.budget.memory
        return (
            memory.cache_gib(planned, self.session) if memory is not None else session_cache_gib(planned, self.session)
        )

    def evaluate(self, policy: Policy, prune: bool = True, cache_gib: float | None = None) -> Outcome:
        """Run `policy` clip by clip; stop once the budget is proven out of reach (when `prune`); `cache_gib` is the
        policy's memory, judged against the budget's memory bound."""
        session, clips = self.session, self.session.clips
        per_clip: dict[str, dict[str, Any]] = {}
        decisions: dict[str, str] = {}
        flops = flops_uncached = cached_seconds = uncached_seconds = 0.0
        notes: list[str] = []
        pruned_at = None
        proven = None
        if self.objective == "time" and self.evaluated and self.evaluated % RETIME_EVERY == 0:
            for clip in clips:  # the machine's speed drifts: the uncached reference time follows it
                self.references.retime(clip)
        self.evaluated += 1
        for index, clip in enumerate(clips):
            reference = self.references.get(clip)
            generation, stats = session.generate_cached(clip, policy)
            flops += stats["flops"]
            flops_uncached += stats["flops_uncached"]
            cached_seconds += generation.denoise_seconds
            uncached_seconds += self.references.local_seconds(clip)
            decisions[clip.name] = stats["decisions"]
            if not bool(torch.isfinite(generation.latents).all()):
                notes.append(f"clip {clip.name}: the cached output holds NaN/inf (try another cache dtype)")
            per_clip[clip.name] = clip_quality(
                reference.frames, generation.frames, clip.mask, reference.latents, generation.latents, self.lpips
            )
            remaining = len(clips) - index - 1
            proven = self.budget.hopeless(list(per_clip.values()), remaining)
            if prune and proven is not None and remaining > 0:
                pruned_at = clip.name
                break
        qualities = list(per_clip.values())
        mean, worst = mean_quality(qualities), worst_quality(qualities)
        speedup_flops = flops_uncached / max(flops, 1.0)
        speedup_time = uncached_seconds / max(cached_seconds, 1e-9)
        speedup = speedup_time if self.objective == "time" else speedup_flops
        constraints = self.budget.constraints(self.budget.aggregate(mean, worst), speedup, cache_gib)
        if pruned_at is not None and proven is not None:
            constraints = {**constraints, **proven}  # the misses proven so far, not those of the clips seen
        return Outcome(
            speedup_flops=speedup_flops,
            speedup_time=speedup_time,
            flops_fraction=flops / max(flops_uncached, 1.0),
            quality=mean,
            quality_worst=worst,
            quality_per_clip=per_clip,
            decisions=decisions,
            seconds={"uncached_denoise_s": uncached_seconds, "cached_denoise_s": cached_seconds},
            constraints={k: (v if math.isfinite(v) else BIG) for k, v in constraints.items()},
            pruned_at_clip=pruned_at,
            notes=notes,
        )


class Objective:
    """The Optuna objective: maximise the speedup; the budget's bounds are constraints (feasible: all ≤ 0)."""

    def __init__(
        self,
        evaluator: Evaluator,
        space: SearchSpace,
        model: ModelSpec,
        workload: WorkloadSpec,
        study_name: str,
    ):
        self.evaluator = evaluator
        self.space = space
        self.model = model
        self.workload = workload
        self.study_name = study_name
        self.worker = worker_identity()
        self.last_trial: int | None = None  # storage id of the last trial this worker evaluated to the end
        self.current_trial: int | None = None  # storage id of the trial being evaluated (None between trials)

    def policy_for(self, params: dict[str, Any], number: int) -> Policy:
        return self.space.policy(params, f"{self.study_name}-trial{number}", self.model, self.workload)

    def _twin(self, study: optuna.Study, key: str, number: int, scored_fully: bool) -> optuna.trial.FrozenTrial | None:
        """An earlier completed trial whose policy behaves identically on this workload (its result is reused);
        with `scored_fully`, only one that was scored on every clip."""
        for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            same = other.number != number and other.user_attrs.get("behaviour") == key
            usable = not other.user_attrs.get(OVER_MEMORY_ATTR) and not (
                scored_fully and other.user_attrs.get("pruned_at_clip")
            )
            if same and other.constraints and usable:
                return other
        return None

    def __call__(self, trial: optuna.Trial) -> float:
        self.last_trial = None
        self.current_trial = trial._trial_id
        with interrupts.allowed():  # Ctrl+C stops the evaluation at once (tuner/interrupts.py)
            value = self._run(trial)
        self.current_trial = None
        self.last_trial = trial._trial_id  # evaluated to the end: a FAIL state now was set by another worker
        return value

    def _run(self, trial: optuna.Trial) -> float:
        for name, value in self.worker.items():  # first: a check that finds this process gone can fail the trial
            trial.set_user_attr(name, value)
        params = self.space.suggest(trial)
        policy = scheduled_policy(self.policy_for(params, trial.number), trial.user_attrs)
        plan = self.evaluator.plan(policy)
        key = behaviour_key(policy, plan)
        trial.set_user_attr("policy", policy.to_dict())
        trial.set_user_attr("behaviour", key)
        cache_gib = self.evaluator.cache_gib(policy, plan)
        trial.set_user_attr(CACHE_GIB_ATTR, cache_gib)
        memory = self.evaluator.budget.memory
        if memory is not None and memory.violation(cache_gib) > 0:  # cannot fit: not run, TPE learns the miss
            trial.set_user_attr(OVER_MEMORY_ATTR, True)
            trial.set_constraint(MAX_CACHE_KEY, memory.violation(cache_gib))
            return 0.0
        anchor = "warm_start" in trial.user_attrs  # a warm start anchors the Pareto front: scored on every clip
        twin = self._twin(trial.study, key, trial.number, scored_fully=anchor)
        if twin is not None:
            for name, value in twin.user_attrs.items():
                if name not in ("policy", *IDENTITY_ATTRS, "behaviour", "warm_start", "same_as", CACHE_GIB_ATTR):
                    trial.set_user_attr(name, value)
            trial.set_user_attr("same_as", twin.number)
            for name, value in twin.constraints.items():
                if name != MAX_CACHE_KEY:
                    trial.set_constraint(name, value)
            if memory is not None:
                trial.set_constraint(MAX_CACHE_KEY, memory.violation(cache_gib))
            return float(twin.value)
        outcome = self.evaluator.evaluate(policy, prune=not anchor, cache_gib=cache_gib)
        for name, value in outcome.attrs().items():
            trial.set_user_attr(name, value)
        for name, value in outcome.constraints.items():
            trial.set_constraint(name, value)
        return outcome.value(self.evaluator.objective)
