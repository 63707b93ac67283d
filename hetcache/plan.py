"""Step plans: which denoising steps are FULL, PARTIAL or REUSE (DESIGN.md, engine semantics 2).

The default rule accumulates the rescaled relative L1 change of the timestep modulation (`timestep_proj`) between
steps. It depends only on the timesteps, so the plan is computed once per run, before the first block runs.
"""

from __future__ import annotations

import numpy as np
import torch

from .policy import StepPlanSpec, check_plan_string
from .steps import FULL, PARTIAL, REUSE


@torch.no_grad()
def timestep_modulation(transformer: torch.nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The per-step timestep modulation [S, 6·D] (`timestep_proj` of Wan's condition embedder)."""
    embedder = transformer.condition_embedder
    device = next(embedder.time_proj.parameters()).device
    t = torch.as_tensor(timesteps, device=device).flatten()
    projected = embedder.timesteps_proj(t)
    dtype = next(embedder.time_embedder.parameters()).dtype
    temb = embedder.time_embedder(projected.to(dtype))
    return embedder.time_proj(embedder.act_fn(temb)).float()


def relative_l1_changes(series: torch.Tensor) -> list[float]:
    """mean|x_i − x_{i−1}| / mean|x_{i−1}| for i ≥ 1 over the first axis (host floats, one sync)."""
    flat = series.float().flatten(1)
    change = (flat[1:] - flat[:-1]).abs().mean(dim=1) / flat[:-1].abs().mean(dim=1).clamp(min=1e-12)
    return change.cpu().tolist()


def rescale(changes: list[float], polynomial: tuple[float, ...] | None) -> list[float]:
    """Apply the fitted rescaling polynomial (highest degree first); identity when there is none."""
    if polynomial is None:
        return list(changes)
    return np.polyval(np.asarray(polynomial, dtype=np.float64), np.asarray(changes, dtype=np.float64)).tolist()


def plan_from_changes(changes: list[float], spec: StepPlanSpec) -> str:
    """Decide every step from the per-step changes (len = steps − 1: change into step i+1)."""
    steps = len(changes) + 1
    rescaled = rescale(changes, spec.polynomial)
    letters = []
    accumulated = 0.0
    for step in range(steps):
        if step < spec.warmup_steps or step >= steps - spec.final_full_steps:
            letters.append(FULL)
            accumulated = 0.0
            continue
        accumulated += rescaled[step - 1]
        if accumulated < spec.reuse_threshold:
            letters.append(REUSE)
        elif accumulated < spec.full_threshold:
            letters.append(PARTIAL)
            accumulated = 0.0
        else:
            letters.append(FULL)
            accumulated = 0.0
    return "".join(letters)


def resolve_plan(transformer: torch.nn.Module, timesteps: torch.Tensor, spec: StepPlanSpec) -> str:
    """The plan for a run with these timesteps: the explicit plan if the spec is explicit, else the rule."""
    if spec.rule == "explicit":
        return check_plan_string(spec.plan or "", "step_plan.plan")
    changes = relative_l1_changes(timestep_modulation(transformer, timesteps))
    return plan_from_changes(changes, spec)
