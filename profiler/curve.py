"""The step-change curve: per-step change of the time modulation and of the model output, and the polynomial that
maps one to the other (numpy.polyval order, x = modulation change, y = output change) for a policy's step plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hetcache.plan import relative_l1_changes, timestep_modulation

from .families import modulation_family


@dataclass(frozen=True)
class PolynomialFit:
    """Coefficients highest degree first, as `numpy.polyval` and `step_plan.polynomial` take them."""

    coefficients: list[float]
    degree: int
    r2: float
    rmse: float
    points: int
    note: str | None = None
    x_range: tuple[float, float] | None = None  # the modulation changes the fit has seen


def fit_polynomial(x: list[float] | np.ndarray, y: list[float] | np.ndarray, degree: int) -> PolynomialFit:
    """Least-squares fit of y ≈ p(x); the degree drops to (distinct x) − 1 when there are too few points."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    distinct = len(np.unique(xs))
    if distinct == 0:
        return PolynomialFit([1.0, 0.0], 1, float("nan"), float("nan"), 0, "no step changes to fit: identity")
    used = min(degree, distinct - 1)
    note = None
    if used < degree:
        note = f"only {distinct} distinct step changes: degree lowered from {degree} to {used}"
    elif distinct == degree + 1:
        note = f"only {distinct} distinct step changes for degree {degree}: the polynomial interpolates them"
    if used == 0:
        coefficients = np.array([float(np.mean(ys))])
    else:
        scale = float(np.max(np.abs(xs))) or 1.0  # fit on x / scale for conditioning, then undo the scaling
        scaled = np.polyfit(xs / scale, ys, used)
        coefficients = scaled / scale ** np.arange(used, -1, -1)
    predicted = np.polyval(coefficients, xs)
    residual = float(np.sum((ys - predicted) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)
    rmse = float(np.sqrt(residual / len(ys)))
    x_range = (float(xs.min()), float(xs.max()))
    return PolynomialFit([float(c) for c in coefficients], used, r2, rmse, len(ys), note, x_range)


def modulation_changes(
    transformer: torch.nn.Module, timesteps: list[float], recorded: torch.Tensor | None
) -> tuple[list[float], str]:
    """Per-step relative L1 change of the time modulation, and where it came from.

    A registered family: `hetcache.plan.timestep_modulation` (the signal the engine's step rule reads, so the fitted
    polynomial feeds it directly); other transformers: the time embedding the blocks consume, recorded during the
    run; else the timestep itself.
    """
    if len(timesteps) < 2:
        return [], "none"
    family = modulation_family(transformer)
    if family is not None:
        changes = relative_l1_changes(timestep_modulation(transformer, torch.tensor(timesteps)))
        return changes, family.modulation_source
    if recorded is not None and recorded.shape[0] == len(timesteps):
        return relative_l1_changes(recorded), "time_embedding"
    return relative_l1_changes(torch.tensor(timesteps).unsqueeze(1)), "timestep"
