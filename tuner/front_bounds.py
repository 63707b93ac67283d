"""Which search-space bounds the Pareto front sits on: a front pressed against a bound was capped by the space.

`hetcache-tune` prints, after a study, one row per front point naming the capping bounds it sits on
(`SearchSpace.bounds_hit`), and one warning line when the best feasible point sits on one past which it would compute
less (the side that holds the fastest point back), with the `--space` flag that widens it.
"""

from __future__ import annotations

from typing import Any

from .budget import Budget
from .results import TrialResult, best_feasible, pareto_front
from .space import SearchSpace


def _space(attrs: dict[str, Any]) -> SearchSpace | None:
    data = attrs.get("search_space")
    return SearchSpace.from_dict(data) if isinstance(data, dict) else None


def bounds_of(result: TrialResult, space: SearchSpace, cheaper: bool = False) -> list[tuple[str, str]]:
    """The capping bounds a trial's point sits on (with `cheaper`: those past which it would compute less)."""
    return space.bounds_hit(result.params, result.plan(), cheaper)


def front_rows(results: list[TrialResult], budget: Budget, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per Pareto-front trial (slowest first): speedup, the budget's first metric, the bounds it sits on."""
    space = _space(attrs)
    rows = []
    for result in pareto_front(results, budget):
        hits = bounds_of(result, space) if space is not None else []
        rows.append(
            {
                "front trial": result.number,
                "speedup": result.value,
                budget.primary: result.aggregate(budget).get(budget.primary, float("nan")),
                "on bound": ", ".join(f"{name} {side}" for name, side in hits) or "-",
            }
        )
    return rows


def best_bound_warning(results: list[TrialResult], budget: Budget, attrs: dict[str, Any]) -> str | None:
    """One line when the best feasible trial sits on a bound past which it would compute less, naming the parameter
    and the `--space` flag that widens it."""
    space, best = _space(attrs), best_feasible(results, budget)
    if space is None or best is None:
        return None
    hits = bounds_of(best, space, cheaper=True)
    if not hits:
        return None
    shown = "; ".join(
        f"{name} at its {side} bound {best.params[name]:.4g} (widen it with {space.widen_hint(name, side)})"
        for name, side in hits
    )
    return f"warning: the best point (trial {best.number}) sits on the search space's edge: {shown}"
