"""Reading a tuning study back: per-trial results, the best feasible trial, the closest miss, the Pareto front.

Feasibility is judged from the recorded quality (mean or worst over clips), speedup and cache size (`cache_gib`),
so a study can be exported under its own budget or under another one (`hetcache-tune export --budget …`). Trials
stopped early (`pruned_at_clip`) saw only some clips: they are never feasible and never on the Pareto front; nor is a
trial whose cache exceeds the budget's memory bound. Trials whose cache exceeded the bound when they were drawn were
not run (`over_memory`): they hold no quality and are not results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from hetcache.metrics import METRICS

from .budget import Budget

CACHE_GIB_ATTR = "cache_gib"  # trial user attr: the memory plan's device GiB for the trial's policy
OVER_MEMORY_ATTR = "over_memory"  # trial user attr of a trial not run because its cache exceeded --max-cache-gib


@dataclass(frozen=True)
class TrialResult:
    """One completed trial as hetcache-tune recorded it."""

    number: int
    value: float
    attrs: dict[str, Any]
    params: dict[str, Any]

    @property
    def pruned_at(self) -> str | None:
        return self.attrs.get("pruned_at_clip")

    @property
    def policy(self) -> dict[str, Any]:
        return self.attrs["policy"]

    @property
    def cache_gib(self) -> float | None:
        """Device GiB hetcache holds for the trial's policy (at the study's memory target; None if not recorded)."""
        return self.attrs.get(CACHE_GIB_ATTR)

    def aggregate(self, budget: Budget) -> dict[str, Any]:
        return budget.aggregate(self.attrs.get("quality") or {}, self.attrs.get("quality_worst") or {})

    def fits(self, budget: Budget) -> bool:
        """Whether the policy meets the budget's memory bound (always, without one)."""
        return budget.memory is None or budget.memory.violation(self.cache_gib) <= 0

    def feasible(self, budget: Budget) -> bool:
        return self.pruned_at is None and budget.feasible(self.aggregate(budget), self.value, self.cache_gib)

    def distance(self, budget: Budget) -> float:
        return budget.distance(self.aggregate(budget), self.value, self.cache_gib)

    def plan(self) -> str:
        decisions = self.attrs.get("decisions") or {}
        return next(iter(decisions.values()), "")


def trial_results(study: optuna.Study, objective: str) -> list[TrialResult]:
    """Completed trials that carry hetcache-tune's attributes, with the speedup of `objective` as value."""
    out = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if "policy" not in attrs or "speedup_flops" not in attrs:
            continue
        value = attrs["speedup_time"] if objective == "time" else attrs["speedup_flops"]
        out.append(TrialResult(trial.number, float(value), dict(attrs), dict(trial.params)))
    return out


def over_memory(study: optuna.Study) -> list[tuple[int, float]]:
    """(number, cache GiB) of the completed trials that were not run because their cache exceeded the bound."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(t.number, float(t.user_attrs[CACHE_GIB_ATTR])) for t in trials if t.user_attrs.get(OVER_MEMORY_ATTR)]


def best_feasible(results: list[TrialResult], budget: Budget) -> TrialResult | None:
    """The fastest trial that meets the budget; of equally fast ones the best in the budget's first metric, then
    the earliest (two plans of one cost can differ by dB)."""
    feasible = [r for r in results if r.feasible(budget)]
    sign = 1.0 if METRICS[budget.primary] else -1.0

    def key(r: TrialResult) -> tuple[float, float, int]:
        quality = r.aggregate(budget).get(budget.primary)
        return (r.value, sign * quality if isinstance(quality, (int, float)) else float("-inf"), -r.number)

    return max(feasible, key=key) if feasible else None


def closest(results: list[TrialResult], budget: Budget) -> TrialResult | None:
    """The trial that misses the budget by the least (fully scored trials first)."""
    if not results:
        return None
    scored = [r for r in results if r.pruned_at is None] or results
    return min(scored, key=lambda r: (r.distance(budget), -r.value, r.number))


def pareto_front(
    results: list[TrialResult],
    budget: Budget,
    metric: str | None = None,
    speed: Callable[[TrialResult], float | None] | None = None,
) -> list[TrialResult]:
    """Trials not beaten on both speed and quality, slowest (best quality) first; one trial per point.

    Quality is `metric` (default: the budget's first) aggregated as the budget says (mean or worst over clips);
    speed is the trial's objective value unless `speed` reads another one. Trials stopped early and trials whose
    cache exceeds the budget's memory bound are left out.
    """
    metric = metric or budget.primary
    higher = METRICS[metric]
    scored = []
    for r in results:
        value = r.aggregate(budget).get(metric)
        fast = r.value if speed is None else speed(r)
        scored_fully = r.pruned_at is None and r.fits(budget)
        if scored_fully and isinstance(value, (int, float)) and isinstance(fast, (int, float)):
            scored.append((r, float(fast), float(value) if higher else -float(value)))
    scored.sort(key=lambda item: (-item[1], -item[2], item[0].number))
    front: list[TrialResult] = []
    best_quality = float("-inf")
    for result, _, quality in scored:
        if quality > best_quality:
            front.append(result)
            best_quality = quality
    return list(reversed(front))


def summary_rows(results: list[TrialResult], budget: Budget, limit: int = 10) -> list[dict[str, Any]]:
    """Rows for the end-of-run table: feasible trials by speedup, then the closest misses."""
    feasible = sorted((r for r in results if r.feasible(budget)), key=lambda r: (-r.value, r.number))
    others = sorted((r for r in results if not r.feasible(budget)), key=lambda r: (r.distance(budget), -r.value))
    rows = []
    for r in (feasible + others)[:limit]:
        if r.feasible(budget):
            state = "feasible"
        elif r.pruned_at is not None:
            state = f"stopped at {r.pruned_at}"
        else:
            state = "misses budget"
        row: dict[str, Any] = {
            "trial": r.number,
            "state": state,
            "speedup": r.value,
            "FLOPs x": r.attrs["speedup_flops"],
            "time x": r.attrs["speedup_time"],
        }
        aggregate = r.aggregate(budget)
        for metric in budget.metrics:
            value = aggregate.get(metric)
            row[metric] = value if isinstance(value, (int, float)) else float("nan")
        row["plan"] = r.plan()
        rows.append(row)
    return rows
