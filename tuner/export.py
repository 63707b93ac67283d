"""Export: the best feasible trial as a policy file with provenance, and a ladder of policies along the Pareto front.

Every file is written atomically. With no feasible trial nothing is written and NoFeasibleTrial names the closest
trial and how far it misses.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hetcache import __version__
from hetcache.atomic import atomic_dir, json_safe, write_json
from hetcache.cli_common import format_value
from hetcache.errors import HetCacheError
from hetcache.policy import Policy, policy_from_dict

from .budget import Budget
from .results import TrialResult, best_feasible, closest, pareto_front

PARETO_INDEX = "index.json"


class NoFeasibleTrial(HetCacheError):
    """No trial of the study meets the budget (the CLI exits with code 3)."""


@dataclasses.dataclass(frozen=True)
class StudyInfo:
    """Where trials came from: study name, storage (password hidden), objective, and the study's attrs."""

    name: str
    storage: str
    objective: str
    attrs: dict[str, Any]


def provenance(result: TrialResult, study: StudyInfo, budget: Budget) -> dict[str, Any]:
    """The provenance block of an exported policy."""
    attrs = result.attrs
    return json_safe(
        {
            "source": "hetcache-tune",
            "tool": f"hetcache {__version__}",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "study": study.name,
            "trial": result.number,
            "contract": (study.attrs.get("workload") or {}).get("contract", "none"),
            "storage": study.storage,
            "budget": budget.as_dict(),
            "budget_mode": budget.mode,
            "min_speedup": budget.min_speedup,
            "objective": study.objective,
            "speedup_flops": attrs["speedup_flops"],
            "speedup_time": attrs["speedup_time"],
            "flops_fraction": attrs.get("flops_fraction"),
            "quality": attrs.get("quality"),
            "quality_worst": attrs.get("quality_worst"),
            "quality_per_clip": attrs.get("quality_per_clip"),
            "decisions": attrs.get("decisions"),
            "cache_gib": attrs.get("cache_gib"),
            "max_cache_gib": budget.memory.max_gib if budget.memory is not None else None,
            "memory_at": list(budget.memory.at) if budget.memory is not None and budget.memory.at else None,
            "clips": list((attrs.get("quality_per_clip") or {}).keys()),
            "profile": study.attrs.get("profile"),
            "workload": study.attrs.get("workload"),
        }
    )


def policy_of(
    result: TrialResult,
    study: StudyInfo,
    budget: Budget,
    name: str | None = None,
    description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Policy:
    """The trial's policy with its resolved plan and full provenance (`extra`: more provenance, e.g. held-out
    quality)."""
    policy = policy_from_dict(result.policy, origin=f"trial {result.number} of study '{study.name}'")
    plan = result.plan()
    step_plan = policy.step_plan
    if plan and policy.workload is not None and len(plan) == policy.workload.steps:
        step_plan = dataclasses.replace(step_plan, plan=plan)
    text = description or (
        f"Tuned by hetcache-tune (study '{study.name}', trial {result.number}) under {budget.describe()}: "
        f"{result.attrs['speedup_flops']:.2f}x FLOPs, {result.attrs['speedup_time']:.2f}x denoising time."
    )
    return dataclasses.replace(
        policy,
        name=name or policy.name,
        description=text,
        step_plan=step_plan,
        provenance={**provenance(result, study, budget), **(extra or {})},
    )


def no_feasible_message(results: list[TrialResult], budget: Budget, study: StudyInfo) -> NoFeasibleTrial:
    near = closest(results, budget)
    if near is None:
        memory = " (trials whose cache exceeds the memory bound are not run)" if budget.memory is not None else ""
        return NoFeasibleTrial(
            f"study '{study.name}' has no scored trials yet{memory}, so no policy meets {budget.describe()}.",
            "run hetcache-tune (more --trials) first" + (", or raise --max-cache-gib." if memory else "."),
        )
    aggregate = near.aggregate(budget)
    misses = ", ".join(f"{m} {format_value(aggregate.get(m, float('nan')))}" for m in budget.metrics)
    stopped = f", stopped after clip {near.pruned_at}" if near.pruned_at else ""
    return NoFeasibleTrial(
        f"no trial of study '{study.name}' ({len(results)} completed) meets {budget.describe()} with a speedup "
        f"≥ {budget.min_speedup:g}x; the closest is trial {near.number}: {misses}, speedup {near.value:.2f}x{stopped}. "
        "No policy was written.",
        "loosen --budget or --min-speedup, or run more --trials (--resume continues the study).",
    )


def export_best(
    results: list[TrialResult],
    budget: Budget,
    study: StudyInfo,
    path: Path,
    name: str | None = None,
    description: str | None = None,
    extra: Callable[[TrialResult], dict[str, Any]] | None = None,
) -> tuple[TrialResult, Path]:
    """Write the best feasible trial's policy to `path`; raise NoFeasibleTrial (writing nothing) if there is none.
    `extra(trial)`: more provenance for the written policy."""
    best = best_feasible(results, budget)
    if best is None:
        raise no_feasible_message(results, budget, study)
    policy = policy_of(best, study, budget, name, description, extra(best) if extra else None)
    return best, policy.save(path)


def export_pareto(
    results: list[TrialResult],
    budget: Budget,
    study: StudyInfo,
    folder: Path,
    front: list[TrialResult] | None = None,
    extra: Callable[[TrialResult], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Write one policy per Pareto-front trial (speedup vs the budget's first metric) plus an index, atomically.
    `front`: the trials to write instead (held-out validation drops some); `extra(trial)`: more provenance."""
    front = pareto_front(results, budget) if front is None else front
    if not front:
        raise NoFeasibleTrial(
            f"study '{study.name}' has no fully scored trial to place on a Pareto front; no ladder was written.",
            "run more --trials (trials stopped early are not on the front).",
        )
    rows = []
    with atomic_dir(folder, "pareto", overwrite=True) as tmp:
        for rung, result in enumerate(front, start=1):
            file = f"{rung:02d}-{result.value:.2f}x.json"
            more = extra(result) if extra else None
            policy = policy_of(result, study, budget, name=f"{study.name}-pareto{rung:02d}", extra=more)
            policy.save(tmp / file)
            rows.append(
                json_safe(
                    {
                        "file": file,
                        "trial": result.number,
                        "speedup": result.value,
                        "speedup_flops": result.attrs["speedup_flops"],
                        "speedup_time": result.attrs["speedup_time"],
                        budget.primary: result.aggregate(budget).get(budget.primary),
                        "cache_gib": result.cache_gib,
                        "feasible": result.feasible(budget),
                        **({"held_out": more["held_out_quality"]} if more and "held_out_quality" in more else {}),
                    }
                )
            )
        write_json(
            tmp / PARETO_INDEX,
            {"study": study.name, "budget": budget.as_dict(), "budget_mode": budget.mode, "ladder": rows},
        )
    return rows
