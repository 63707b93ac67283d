"""What a schedule study runs next: the step model's candidates while they can matter, then untried neighbours of
its measured front, verified as trials.

Candidates are enqueued a round at a time, in `schedule.candidates` order, up to the study's candidate quota; one
is left out when its computed steps alone cost more than the budget's least speedup allows, when it computes two
steps more than the cheapest measured plan that meets the budget (it could only add a slow point to the front), or
when it is a second plan for a count more than one step from that plan's.

Each refinement round first fits the step model's one free weight (the spans from the first step, which the
first-order estimate overprices on a trained model) to the measured step plans, and enqueues what the model so
calibrated plans best at the feasible plan's cost and one step either side.

The step model prices plans of FULL and REUSE steps from one uncached pass; it cannot price a PARTIAL step, and it
misranks plans of equal cost whose errors are close. So a schedule study verifies the model's candidates first and
keeps a share of its trials (`REFINE_SHARE`) for refinement: whenever no trial is queued, each round takes two
measured plans — the fastest that meets the budget and the nearest miss that is faster — and enqueues their best
untried neighbours, one move each:

- a middle FULL step of the plan that meets the budget made PARTIAL or REUSE (cheaper; the FULL the model misses
  least first),
- a REUSE step of the nearest miss made FULL or PARTIAL (better; the REUSE the model would gain most from computing
  first): a step dropped from the one or added to the other fills the cost levels between the two plans,
- a computed step of either moved by one step (same cost; by the model's predicted error).

A PARTIAL step here is a light one (`LIGHT_PARTIAL`): the first half of the main blocks in the space's order (the
profile's, else the model's) token-level, stride-selected context, no margin, no K/V refresh, VACE blocks in full;
every block partial with the refresh costs less but lost more at the same plans (12-step study, README). Quality
and the front still come from measured trials only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna

from hetcache.steps import FULL, PARTIAL, REUSE

from .budget import Budget
from .results import TrialResult, best_feasible, trial_results
from .schedule import (
    CANDIDATE_LABEL,
    FORECAST_SETTINGS,
    PLAN_ATTR,
    Candidate,
    candidate_attrs,
    forecast_acts,
    space_point,
)
from .space import SearchSpace
from .step_model import StepModel, best_plans, fit_first_span

LIGHT_PARTIAL = {"margin_width": 0, "context_ratio": 0.1, "selection": "stride", "refresh_skipped_kv": False}
REFINE_SHARE = 1 / 3  # share of a schedule study's trials kept for refinement (the rest verify model candidates)
PER_ROUND = 2  # neighbours enqueued per round (one from each list in turn)


@dataclass(frozen=True)
class Move:
    """A neighbour of a measured plan: its letters, the forecast it keeps, and what changed."""

    plan: str
    forecast: str
    label: str


def refine_trials(trials: int) -> int:
    """How many of a schedule study's `trials` are kept for refinement."""
    return int(trials * REFINE_SHARE)


def middle(plan: str, warmup: int, final: int) -> range:
    """Step indices a move may change: after the warm-up steps, before the final FULL steps."""
    return range(warmup, len(plan) - final)


def _with(plan: str, index: int, letter: str) -> str:
    return plan[:index] + letter + plan[index + 1 :]


def _modelled(plan: str) -> str:
    """The plan as the step model reads it: PARTIAL steps priced as computed steps."""
    return plan.replace(PARTIAL, FULL)


def cheaper_moves(
    plan: str, forecast: str, model: StepModel, warmup: int, final: int, letter: str = PARTIAL
) -> list[Move]:
    """Each middle FULL step made `letter` (PARTIAL, or REUSE), the one whose loss (as REUSE) the model predicts
    smallest first."""
    use = forecast != "none"
    found = [(model.plan_error(_modelled(_with(plan, i, REUSE)), use), i) for i in middle(plan, warmup, final)]
    ranked = sorted((error, i) for error, i in found if plan[i] == FULL)
    return [Move(_with(plan, i, letter), forecast, f"F→{letter} at {i}") for _, i in ranked]


def better_moves(
    plan: str, forecast: str, model: StepModel, warmup: int, final: int, letter: str = PARTIAL
) -> list[Move]:
    """Each middle REUSE step made `letter` (PARTIAL, or FULL), the one whose computing the model predicts gains
    most first."""
    use = forecast != "none"
    found = [(model.plan_error(_modelled(_with(plan, i, FULL)), use), i) for i in middle(plan, warmup, final)]
    ranked = sorted((error, i) for error, i in found if plan[i] == REUSE)
    return [Move(_with(plan, i, letter), forecast, f"R→{letter} at {i}") for _, i in ranked]


def shift_moves(plan: str, forecast: str, model: StepModel, warmup: int, final: int) -> list[Move]:
    """Each middle computed step swapped with a REUSE neighbour inside the middle, least predicted error first."""
    use = forecast != "none"
    steps = middle(plan, warmup, final)
    out = []
    for i in steps:
        for j in (i - 1, i + 1):
            if j in steps and plan[i] != REUSE and plan[j] == REUSE:
                moved = _with(_with(plan, i, REUSE), j, plan[i])
                out.append((model.plan_error(_modelled(moved), use), Move(moved, forecast, f"{plan[i]} {i}→{j}")))
    return [move for _, move in sorted(out, key=lambda item: item[0])]


def replanned(model: StepModel, best: TrialResult, warmup: int, final: int) -> list[Move]:
    """The calibrated model's best plans at the cost of the fastest plan that meets the budget, one step cheaper and
    one step dearer, both forecast settings: each count's best before a second for any, as the candidates go."""
    k = len(best.attrs[PLAN_ATTR]) - best.attrs[PLAN_ATTR].count(REUSE)
    per_count = []
    for count in (k, k - 1, k + 1):
        options = []
        for name, forecast in FORECAST_SETTINGS:
            for error, plan in best_plans(model, forecast, warmup, final, 2).get(count, []):
                if not forecast or forecast_acts(plan):
                    options.append((error, Move(plan, name, f"re-planned k={count}")))
        per_count.append([move for _, move in sorted(options, key=lambda item: item[0])])
    return list(_interleave(per_count))


def anchors(results: list[TrialResult], budget: Budget) -> tuple[TrialResult | None, TrialResult | None]:
    """The fastest measured plan that meets the budget (of equally fast ones the best), and the nearest miss faster
    than it."""
    planned = [r for r in results if PLAN_ATTR in r.attrs and r.pruned_at is None]
    best = best_feasible(planned, budget)
    floor = best.value if best is not None else 0.0
    misses = [r for r in planned if not r.feasible(budget) and r.value > floor]
    miss = min(misses, key=lambda r: (r.distance(budget), -r.value, r.number)) if misses else None
    return best, miss


def _forecast(result: TrialResult) -> str:
    return str(result.params.get("forecast", "none"))


def _interleave(lists: list[list[Move]]) -> Iterator[Move]:
    longest = max((len(moves) for moves in lists), default=0)
    for rank in range(longest):
        for moves in lists:
            if rank < len(moves):
                yield moves[rank]


def useful(candidate: Candidate, steps: int, budget: Budget, floor: int | None) -> bool:
    """Whether a candidate can still matter: its cost (its computed steps' share) can meet the budget's least
    speedup and, once a measured plan meets the budget with `floor` computed steps, it computes at most one step more
    (a costlier one could only add a slow point to the front) — and, if it is not its count's first, it is within
    one step of `floor` (second opinions are worth their cost where the budget is crossed)."""
    affordable = candidate.computed / steps <= 1.0 / budget.min_speedup
    if floor is None or not affordable:
        return affordable
    near = abs(candidate.computed - floor) <= 1
    return candidate.computed <= floor + 1 and (candidate.place == 0 or near)


class Refiner:
    """Feeds a schedule study's queue (call `round` when no trial is queued): the step model's candidates first, as
    long as they can matter and the study's candidate quota lasts, then refinement rounds."""

    def __init__(
        self,
        model: StepModel,
        space: SearchSpace,
        budget: Budget,
        objective: str,
        limit: int,
        candidates: list[Candidate] | None = None,
        quota: int = 0,
    ) -> None:
        self.model = model
        self.space = space
        self.budget = budget
        self.objective = objective
        self.limit = limit  # trials the study holds in total: refinement stops there
        self.candidates = candidates or []
        self.quota = quota  # candidate trials at most (the rest of `limit` refines)

    def next_candidates(self, study: optuna.Study) -> list[Candidate]:
        """The candidates still worth verifying, in order (none once the quota is spent)."""
        trials = study.get_trials(deepcopy=False)
        verified = sum(str(t.user_attrs.get("warm_start", "")).startswith(CANDIDATE_LABEL) for t in trials)
        if verified >= self.quota:
            return []
        planned = [r for r in trial_results(study, self.objective) if PLAN_ATTR in r.attrs and r.pruned_at is None]
        met = [len(r.attrs[PLAN_ATTR]) - r.attrs[PLAN_ATTR].count(REUSE) for r in planned if r.feasible(self.budget)]
        floor = min(met, default=None)
        tried = {(t.user_attrs.get(PLAN_ATTR), str(t.params.get("forecast", "none"))) for t in trials}
        fresh = [
            c
            for c in self.candidates
            if (c.plan, c.forecast) not in tried and useful(c, self.model.steps, self.budget, floor)
        ]
        return fresh[: self.quota - verified]

    def calibrated(self, results: list[TrialResult]) -> StepModel:
        """The step model with its first-span weight fitted to the measured step plans (FULL and REUSE only)."""
        measured = []
        for r in results:
            plan, error = r.attrs.get(PLAN_ATTR), r.aggregate(self.budget).get("latent_rel_l2")
            if plan and PARTIAL not in plan and r.pruned_at is None and isinstance(error, (int, float)):
                measured.append((plan, _forecast(r) != "none", float(error)))
        return self.model.with_first_span(fit_first_span(self.model, measured))

    def moves(self, study: optuna.Study) -> list[Move]:
        """This round's untried neighbours, in the order they would be enqueued."""
        warmup, final = self.space.warmup_steps[0], max(1, self.space.final_full_steps[0])
        results = trial_results(study, self.objective)
        model = self.calibrated(results)
        best, miss = anchors(results, self.budget)
        lists: list[list[Move]] = []  # the feasible plan made cheaper, the miss computing one more step, the moves
        rules = [(best, cheaper_moves, PARTIAL), (miss, better_moves, FULL), (best, cheaper_moves, REUSE)]
        rules += [(miss, better_moves, PARTIAL), (best, shift_moves, None), (miss, shift_moves, None)]
        for anchor, rule, letter in rules:
            if anchor is not None:
                plan, forecast = anchor.attrs[PLAN_ATTR], _forecast(anchor)
                extra = {} if letter is None else {"letter": letter}
                lists.append(rule(plan, forecast, model, warmup, final, **extra))
        tried = {
            (t.user_attrs.get(PLAN_ATTR), str(t.params.get("forecast", "none")))
            for t in study.get_trials(deepcopy=False)
        }
        again = replanned(model, best, warmup, final) if best is not None else []
        out: list[Move] = []
        for move in _interleave([again, list(_interleave(lists))]):  # a re-planned plan first in every round
            if (move.plan, move.forecast) not in tried:
                tried.add((move.plan, move.forecast))
                out.append(move)
        return out

    def round(self, study: optuna.Study) -> int:
        """Enqueue up to PER_ROUND candidates, else as many neighbours, never past the study's trials in total;
        returns how many."""
        room = min(PER_ROUND, self.limit - len(study.get_trials(deepcopy=False)))
        if room <= 0:
            return 0
        candidates = self.next_candidates(study)[:room]
        for c in candidates:
            study.enqueue_trial(space_point(self.space, c), user_attrs=candidate_attrs(c))
        if candidates:
            return len(candidates)
        chosen = self.moves(study)[:room]
        for move in chosen:
            study.enqueue_trial(
                self.point(move), user_attrs={"warm_start": f"refine {move.label}", PLAN_ATTR: move.plan}
            )
        return len(chosen)

    def point(self, move: Move) -> dict[str, Any]:
        """The search-space parameters a move's trial records: its forecast and FULL ends, and the refreshed
        token-level settings when it has PARTIAL steps."""
        lead = len(move.plan) - len(move.plan.lstrip(FULL))
        tail = len(move.plan) - len(move.plan.rstrip(FULL))
        values: dict[str, Any] = {"forecast": move.forecast, "warmup_steps": lead, "final_full_steps": tail}
        if PARTIAL in move.plan:
            values |= LIGHT_PARTIAL | {"partial_blocks": max(1, len(self.space.main_order) // 2), "partial_vace": False}
        return self.space.point(**values)
