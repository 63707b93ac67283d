"""Step plans: which denoising steps are FULL, PARTIAL or REUSE.

The rule accumulates the rescaled relative L1 change of the timestep modulation (the family's, e.g. Wan's
`timestep_proj`) between steps.
It depends only on the timesteps, so a whole plan is usually computed once per run (`resolve_plan`); when the
timesteps are not known in advance the engine feeds the same `StepRule` one step at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UnsupportedModelError
from .policy import StepPlanSpec, check_plan_string
from .steps import FULL, PARTIAL, REUSE


@torch.no_grad()
def timestep_modulation(transformer: torch.nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The per-step timestep modulation [S, …] the blocks receive, as the transformer's family computes it (Wan:
    `timestep_proj` of its condition embedder; LTX-Video: the output of `time_embed`)."""
    from .engine.registry import family_of

    family = family_of(transformer)
    if family.timestep_modulation is None:
        raise UnsupportedModelError(
            f"the {family.name} family adapter says nothing of its timestep modulation, which the step rule reads.",
            "give its Family a timestep_modulation, or use an explicit step plan.",
        )
    return family.timestep_modulation(transformer, timesteps)


def relative_l1_changes(series: torch.Tensor) -> list[float]:
    """mean|x_i − x_{i−1}| / mean|x_{i−1}| for i ≥ 1 over the first axis (host floats, one sync)."""
    flat = series.float().flatten(1)
    change = (flat[1:] - flat[:-1]).abs().mean(dim=1) / flat[:-1].abs().mean(dim=1).clamp(min=1e-12)
    return change.cpu().tolist()


def step_changes(transformer: torch.nn.Module, timesteps: torch.Tensor) -> list[float]:
    """The modulation change into each step after the first (len = steps − 1): what the step rule accumulates."""
    return relative_l1_changes(timestep_modulation(transformer, timesteps))


def rescale(changes: list[float], polynomial: tuple[float, ...] | None) -> list[float]:
    """Apply the fitted rescaling polynomial (highest degree first); identity when there is none."""
    if polynomial is None:
        return list(changes)
    return np.polyval(np.asarray(polynomial, dtype=np.float64), np.asarray(changes, dtype=np.float64)).tolist()


class StepRule:
    """The accumulated-change rule, fed one step at a time (the one definition behind every plan).

    Warm-up steps and the final steps are FULL; at least the last step is FULL whatever `final_full_steps` says
    (a run never ends on a reused or partial output), when the step count is known. In between, the rescaled
    change is accumulated since the last computed step: below `reuse_threshold` the step is REUSE, below
    `full_threshold` PARTIAL, else FULL; a computed step resets the sum. With `max_partial_run` set, a step that
    would be the (max_partial_run + 1)-th PARTIAL step since the last FULL one is FULL instead: the skipped
    tokens' cached residuals, refreshed only on FULL steps, are never older than that many PARTIAL steps.
    """

    def __init__(self, spec: StepPlanSpec, steps: int | None = None) -> None:
        self.spec = spec
        self.steps = steps
        self.accumulated = 0.0
        self.partial_run = 0  # PARTIAL steps since the last FULL step

    def final_steps(self) -> int:
        """How many steps at the end are FULL: `final_full_steps`, at least 1."""
        return max(1, self.spec.final_full_steps)

    def decide(self, step: int, change: float | None) -> str:
        """The letter of `step`, given the (unrescaled) change into it; None when there is no previous step."""
        spec = self.spec
        final = self.steps is not None and step >= self.steps - self.final_steps()
        if step < spec.warmup_steps or final or change is None:
            return self._computed(FULL)
        self.accumulated += rescale([change], spec.polynomial)[0]
        if self.accumulated < spec.reuse_threshold:
            return REUSE
        return self._computed(PARTIAL if self.accumulated < spec.full_threshold else FULL)

    def settle(self, letter: str) -> str:
        """The letter a step given `letter` (by the rule or an explicit plan) runs with, recorded: REUSE as it is;
        PARTIAL, unless it would be the (max_partial_run + 1)-th since the last FULL step, then FULL."""
        return letter if letter == REUSE else self._computed(letter)

    def _computed(self, letter: str) -> str:
        """Record a computed step: the staleness bound applied, the accumulated change restarted, a FULL step
        ending the PARTIAL run."""
        stale = self.spec.max_partial_run is not None and self.partial_run >= self.spec.max_partial_run
        letter = FULL if stale else letter
        self.accumulated = 0.0
        self.partial_run = self.partial_run + 1 if letter == PARTIAL else 0
        return letter


def plan_from_changes(changes: list[float], spec: StepPlanSpec) -> str:
    """Decide every step from the per-step changes (len = steps − 1: change into step i+1)."""
    rule = StepRule(spec, len(changes) + 1)
    return "".join(rule.decide(step, None if step == 0 else changes[step - 1]) for step in range(len(changes) + 1))


def bound_partial_runs(plan: str, max_partial_run: int | None) -> str:
    """An explicit plan under the rule's staleness bound (`StepPlanSpec.max_partial_run`, None: unchanged): each
    PARTIAL step past the bound since the last FULL one becomes FULL, exactly where the rule would put it."""
    rule = StepRule(StepPlanSpec(max_partial_run=max_partial_run), len(plan))
    return "".join(rule.settle(letter) for letter in plan)


def resolve_plan(transformer: torch.nn.Module, timesteps: torch.Tensor, spec: StepPlanSpec) -> str:
    """The plan for a run with these timesteps: the explicit plan if the spec is explicit, else the rule."""
    if spec.rule == "explicit":
        return check_plan_string(spec.plan or "", "step_plan.plan")
    return plan_from_changes(step_changes(transformer, timesteps), spec)
