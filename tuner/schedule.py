"""`--search schedule`: step plans chosen from a one-pass step model, then verified by real trials.

Instead of sampling the search space, a schedule study (1) records each calibration clip's step table during its
uncached reference run (`step_model`; one extra uncached pass only for a clip whose reference was already on
disk), (2) finds the plans of least predicted error for every number of computed steps, with and without the
linear forecast (`best_plans`), and (3) enqueues them as the study runs, one per cost level before a second for
any, as ordinary trials of the Optuna study, leaving out the cost levels that cannot matter (`tuner/refine.py`):
each runs with the engine on every clip, its quality is measured, and the Pareto front and the exported policy
come from these measured trials only. The study's `--trials` bounds how many are verified; the rest refine the
measured front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from hetcache.policy import Policy
from hetcache.steps import FULL, PARTIAL, REUSE

from .references import ReferenceStore
from .results import OVER_MEMORY_ATTR, TrialResult
from .space import SearchSpace
from .step_model import StepModel, StepRecorder, StepTable, best_plans

SEARCHES = ("tpe", "schedule")
PLAN_ATTR = "schedule_plan"  # trial user attr: the explicit step plan the trial runs
PREDICTED_ATTR = "predicted_error"  # trial user attr: the step model's predicted latent_rel_l2 of that plan
STUDY_ATTR = "schedule"  # study user attr: the candidates enqueued and the capture passes run
KEEP = 3  # plans kept per computed-step count and forecast setting
CANDIDATE_LABEL = "schedule "  # a candidate trial's `warm_start` label starts so (refinement trials: "refine ")
FORECAST_SETTINGS = (("linear", True), ("none", False))


@dataclass(frozen=True)
class Candidate:
    """A plan to verify: its letters, forecast setting, computed steps, rank at that count and setting, predicted
    error, and its place among its count's candidates (0: the count's first)."""

    plan: str
    forecast: str
    computed: int
    rank: int
    predicted: float
    place: int = 0


def spread(values: list[int]) -> list[int]:
    """`values` (sorted) in an order whose every prefix covers their range evenly: ends, middle, quarters, …"""
    if len(values) <= 2:
        return list(values)
    order, seen, queue = [values[0], values[-1]], {0, len(values) - 1}, [(0, len(values) - 1)]
    while queue:
        low, high = queue.pop(0)
        middle = (low + high) // 2
        if middle in seen:
            continue
        seen.add(middle)
        order.append(values[middle])
        queue += [(low, middle), (middle, high)]
    return order + [v for i, v in enumerate(values) if i not in seen]


def forecast_acts(plan: str) -> bool:
    """Whether the linear forecast changes what `plan` computes: a REUSE step after the second computed step (before
    it, the engine has one computed step to extrapolate from, and reuses it as it is)."""
    computed = [i for i, letter in enumerate(plan) if letter != REUSE]
    return len(computed) > 1 and REUSE in plan[computed[1] :]


def candidates(model: StepModel, space: SearchSpace, keep: int = KEEP) -> list[Candidate]:
    """Every plan to verify, most useful first: one plan for each count of computed steps (spread over the cost range,
    all FULL left out) before a second for any, so that a short study leaves no cost level empty. Each count's plans
    go best forecast setting's best first, then the other setting's, then the runners-up; a forecast plan the
    forecast does not change is left to its plain twin."""
    warmup, final = space.warmup_steps[0], max(1, space.final_full_steps[0])
    ranked: dict[tuple[int, str], list[tuple[float, str]]] = {}
    for name, forecast in FORECAST_SETTINGS:
        for k, plans in best_plans(model, forecast, warmup, final, keep).items():
            if k < model.steps:
                ranked[(k, name)] = [(e, plan) for e, plan in plans if not forecast or forecast_acts(plan)]
    per_count: list[list[Candidate]] = []
    for k in spread(sorted({k for k, _ in ranked})):
        options = [
            (rank, error, plan, name)
            for name, _ in FORECAST_SETTINGS
            for rank, (error, plan) in enumerate(ranked.get((k, name), []))
        ]
        per_count.append(
            [Candidate(plan, name, k, rank, error, i) for i, (rank, error, plan, name) in enumerate(sorted(options))]
        )
    longest = max((len(plans) for plans in per_count), default=0)
    return [plans[i] for i in range(longest) for plans in per_count if i < len(plans)]


def capture_tables(session: Any, references: ReferenceStore) -> tuple[StepModel, int]:
    """The step table of every calibration clip (from disk, else recorded during its reference run, else in one
    uncached pass); returns the model and how many extra uncached passes were run."""
    passes = 0
    tables = []
    for clip in session.clips:
        path = references.folder / f"{clip.name}.steps.npz"
        table = StepTable.load(path)
        if table is None:
            fresh = not references.has(clip)  # no reference yet: this run is the reference
            recorder = StepRecorder(session.transformer, session.workload.guidance_scale)
            try:
                generation = session.generate(clip, decode=fresh)
            finally:
                recorder.remove()
            if fresh:
                references.store(clip, generation)
            else:
                passes += 1
            table = recorder.table(generation.latents)
            table.save(path)
        tables.append(table)
    return StepModel(tables), passes


def space_point(space: SearchSpace, candidate: Candidate) -> dict[str, Any]:
    """The search-space parameters recorded with a candidate: step reuse only, its forecast and FULL ends."""
    lead = len(candidate.plan) - len(candidate.plan.lstrip(FULL))
    tail = len(candidate.plan) - len(candidate.plan.rstrip(FULL))
    return space.point(forecast=candidate.forecast, warmup_steps=lead, final_full_steps=tail)


def record(study: optuna.Study, model: StepModel, quota: int, passes: int) -> None:
    """Note on the study, once (a resumed or joining worker finds it), how many candidates it may verify and how
    many capture passes its step tables cost; the candidates themselves are enqueued as the study runs
    (`tuner/refine.py`), so that what is measured decides which are still worth running."""
    if STUDY_ATTR not in study.user_attrs:
        study.set_user_attr(STUDY_ATTR, {"candidates": quota, "capture_passes": passes, "steps": model.steps})


def candidate_attrs(candidate: Candidate) -> dict[str, Any]:
    """The user attrs a candidate's trial is enqueued with: its label, explicit plan and predicted error."""
    label = f"{CANDIDATE_LABEL}k={candidate.computed} #{candidate.rank + 1}"
    return {"warm_start": label, PLAN_ATTR: candidate.plan, PREDICTED_ATTR: candidate.predicted}


def scheduled_policy(policy: Policy, trial_attrs: dict[str, Any]) -> Policy:
    """The trial's policy with its explicit schedule plan, when it was enqueued with one."""
    plan = trial_attrs.get(PLAN_ATTR)
    return policy if plan is None else policy.replace(rule="explicit", plan=plan)


@dataclass(frozen=True)
class StepCount:
    """Denoising steps the trials of a study ran (twins and trials not run excluded)."""

    trials: int
    steps: int
    computed: int  # FULL and PARTIAL steps (REUSE steps run no block)


def trial_steps(results: list[TrialResult]) -> StepCount:
    """Count the steps each evaluated trial ran on each clip it was scored on (from its recorded decisions)."""
    trials = steps = computed = 0
    for r in results:
        if "same_as" in r.attrs or r.attrs.get(OVER_MEMORY_ATTR):
            continue
        plans = (r.attrs.get("decisions") or {}).values()
        trials += 1
        steps += sum(len(p) for p in plans)
        computed += sum(p.count(FULL) + p.count(PARTIAL) for p in plans)
    return StepCount(trials, steps, computed)
