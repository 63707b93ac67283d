"""Optuna studies written by hetcache-tune, read without writing to the storage (docs/files.md, "Study storage").

Storages are opened by the tuner's own opener (`hetcache.tuner.study_storage`, read-only), and a study's verdicts
come from the tuner's own readers (`hetcache.tuner.results`): feasibility, the best feasible trial and the Pareto
front are the ones `hetcache-tune` prints and exports, never a second computation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from hetcache.tuner.budget import Budget, budget_from_attrs
from hetcache.tuner.results import TrialResult, best_feasible, pareto_front, trial_results
from hetcache.tuner.study_storage import READ_FIX, open_storage, resolve_url
from optuna.trial import FrozenTrial, TrialState

from hetcache.errors import HetCacheError
from hetcache.metrics import METRICS
from hetcache.policy import Policy, load_policy

from .readers import DataError

SPEEDUPS = {"objective": "speedup (objective)", "speedup_flops": "speedup (FLOPs)", "speedup_time": "speedup (time)"}
QUALITY_KEYS = {"mean": "quality", "worst": "quality_worst"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_read_only(url: str) -> optuna.storages.BaseStorage:
    """The storage of `url` (sqlite:///…, journal:<file>, a .db / journal path, or any RDB URL), read-only."""
    if not url.strip():
        raise DataError("no study storage is selected.", READ_FIX)
    return open_storage(resolve_url(url, Path.cwd()), read_only=True)


def study_names(url: str) -> list[str]:
    """Names of the studies in a storage."""
    storage = open_read_only(url)
    try:
        return sorted(optuna.get_all_study_names(storage))
    except Exception as exc:
        raise DataError(f"storage '{url}' cannot be listed ({type(exc).__name__}: {exc}).", READ_FIX) from None


def load_study(url: str, name: str) -> optuna.Study:
    """Load study `name` from `url`."""
    try:
        return optuna.load_study(study_name=name, storage=open_read_only(url))
    except KeyError:
        raise DataError(f"storage '{url}' has no study '{name}'.", "pick one of the studies it lists.") from None


@dataclass(frozen=True)
class StudyVerdicts:
    """A study as hetcache-tune judges it: its budget and objective, scored trials, feasible ones, the best."""

    budget: Budget
    objective: str
    results: list[TrialResult]

    @property
    def feasible(self) -> list[TrialResult]:
        return [r for r in self.results if r.feasible(self.budget)]

    @property
    def feasible_numbers(self) -> set[int]:
        return {r.number for r in self.feasible}

    @property
    def best(self) -> TrialResult | None:
        """The trial `hetcache-tune` exports as policy.json."""
        return best_feasible(self.results, self.budget)

    def front(self, metric: str, speedup: str = "objective", mode: str | None = None) -> list[TrialResult]:
        """The tuner's Pareto front of the feasible trials for (speedup, metric), quality over clips by `mode`."""
        budget = dataclasses.replace(self.budget, mode=mode or self.budget.mode)
        return pareto_front(self.feasible, budget, metric, lambda r: speedup_of_result(r, speedup))


def verdicts(study: optuna.Study) -> StudyVerdicts:
    """The tuner's reading of a study (its recorded budget and objective)."""
    attrs = study.user_attrs
    try:
        budget = budget_from_attrs(attrs)
    except HetCacheError as exc:
        raise DataError(f"study '{study.study_name}': {exc.what}", "pick a study written by hetcache-tune.") from None
    objective = str(attrs.get("objective", "flops"))
    return StudyVerdicts(budget, objective, trial_results(study, objective))


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (strings such as "unavailable", NaN, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def speedup_of_result(result: TrialResult, which: str) -> float | None:
    """The objective value (which="objective") or a recorded speedup of a scored trial."""
    return _number(result.value) if which == "objective" else _number(result.attrs.get(which))


def speedup_of(trial: FrozenTrial, which: str) -> float | None:
    """The objective value (which="objective") or a recorded speedup user attribute."""
    if which == "objective":
        return _number(trial.value) if trial.state == TrialState.COMPLETE else None
    return _number(trial.user_attrs.get(which))


def quality_of(trial: FrozenTrial, metric: str, mode: str = "mean") -> float | None:
    """A trial's mean (or worst-clip) value of a quality metric, if numeric."""
    quality = trial.user_attrs.get(QUALITY_KEYS[mode]) or {}
    return _number(quality.get(metric)) if isinstance(quality, dict) else None


def quality_metrics(trials: list[FrozenTrial]) -> list[str]:
    """Metrics with a numeric mean value in at least one trial, in hetcache's METRICS order."""
    seen = {m for t in trials for m in METRICS if quality_of(t, m) is not None}
    return [m for m in METRICS if m in seen]


def trial_table(trials: list[FrozenTrial], judged: StudyVerdicts) -> pd.DataFrame:
    """One row per trial: state, speedups, feasibility (the tuner's), mean and worst quality, parameters."""
    feasible = judged.feasible_numbers
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "speedup": speedup_of(t, "objective"),
            "speedup_flops": _number(t.user_attrs.get("speedup_flops")),
            "speedup_time": _number(t.user_attrs.get("speedup_time")),
            "flops_fraction": _number(t.user_attrs.get("flops_fraction")),
            "feasible": t.number in feasible if t.state == TrialState.COMPLETE else None,
            "violated": ", ".join(k for k, v in t.constraints.items() if v > 0),
        }
        for metric in METRICS:
            row[metric] = quality_of(t, metric)
            row[f"worst_{metric}"] = quality_of(t, metric, "worst")
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["pruned_at_clip"] = t.user_attrs.get("pruned_at_clip")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all") if not table.empty else table


def front_points(
    trials: list[FrozenTrial], judged: StudyVerdicts, metric: str, speedup: str = "objective", mode: str = "mean"
) -> dict[str, list[tuple[int, float, float]]]:
    """(trial, metric value, speedup) of every completed trial with both, grouped as the figure draws them:
    "Best Trial" (on the tuner's front), "Feasible Trial", "Infeasible Trial"."""
    front = {r.number for r in judged.front(metric, speedup, mode)}
    feasible = judged.feasible_numbers
    groups: dict[str, list[tuple[int, float, float]]] = {"Best Trial": [], "Feasible Trial": [], "Infeasible Trial": []}
    for t in sorted(trials, key=lambda t: t.number):
        x, y = quality_of(t, metric, mode), speedup_of(t, speedup)
        if t.state != TrialState.COMPLETE or x is None or y is None:
            continue
        group = "Best Trial" if t.number in front else "Feasible Trial" if t.number in feasible else "Infeasible Trial"
        groups[group].append((t.number, x, y))
    return groups


def trial_policy(trial: FrozenTrial) -> Policy:
    """The policy a trial evaluated (user attribute "policy"), validated."""
    data = trial.user_attrs.get("policy")
    if not isinstance(data, dict):
        raise DataError(f"trial {trial.number} has no recorded policy.", "pick a completed trial of hetcache-tune.")
    try:
        return load_policy(data)
    except HetCacheError as exc:
        raise DataError(f"trial {trial.number}'s policy is invalid: {exc.what}", exc.fix) from None
