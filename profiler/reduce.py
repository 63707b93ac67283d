"""Turn one clip's device buffers into host results: per-class curves, pooled float16 tensors, the step series."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .recorder import ClipState

CLASS_AXIS = ("generative", "margin", "context", "all")
TOKEN_CLASS_CODES = {0: "context", 1: "margin", 2: "generative"}


@dataclass
class ClipResult:
    """What one profiled clip contributes to a Profile (host memory only)."""

    name: str
    grid: tuple[int, int, int] | None
    token_counts: dict[str, int] | None
    steps: int
    timesteps: list[float]
    output_change: list[float]
    modulation: torch.Tensor | None
    drift_by_class: np.ndarray  # [branch, step, layer, class(+all)]
    residual_by_class: np.ndarray | None
    attention_by_class: np.ndarray | None  # [slot, layer, (generative, margin, context, text)]
    attention_steps: list[int]
    tensors: dict[str, torch.Tensor]
    pool: list[int] | None
    pooled_grid: list[int] | None
    tokens: int
    hidden_dim: int
    element_size: int
    text_len: int
    denoise_seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)


def class_weights(clip: ClipState) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N, 4] column-normalised class indicators (generative, margin, context, all) and the raw [N, 3] ones."""
    n = clip.tokens
    if clip.classes is None:
        weights = torch.full((n, 4), float("nan"), device=clip.device)
        weights[:, 3] = 1.0 / n
        return weights, None
    onehot = torch.stack([clip.classes.generative[0], clip.classes.margin[0], clip.classes.context[0]], dim=1).float()
    counts = onehot.sum(dim=0)
    weights = torch.cat([onehot / counts.clamp(min=1.0), torch.full((n, 1), 1.0 / n, device=clip.device)], dim=1)
    weights[:, :3] = torch.where(counts > 0, weights[:, :3], torch.full_like(weights[:, :3], float("nan")))
    return weights, onehot


def pool_plan(grid: tuple[int, int, int] | None, tokens: int, max_tokens: int) -> tuple[list[int], list[int]] | None:
    """Pooling kernel and pooled grid that bring `tokens` to at most `max_tokens` (None: no pooling needed)."""
    if tokens <= max_tokens:
        return None
    if grid is not None:
        frames, h, w = grid
        for f in range(2, max(h, w) + 1):
            pooled = [frames, math.ceil(h / f), math.ceil(w / f)]
            if math.prod(pooled) <= max_tokens:
                return [1, f, f], pooled
    f = math.ceil(tokens / max_tokens)
    return [f], [math.ceil(tokens / f)]


def pool_tokens(
    x: torch.Tensor, grid: tuple[int, int, int] | None, kernel: list[int] | None, mode: str
) -> torch.Tensor:
    """Pool the last (token) axis of `x` with `kernel` on the token grid (mean, or max for class codes)."""
    if kernel is None:
        return x
    lead, n = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, 1, n).float()
    if len(kernel) == 3:
        volume = flat.view(-1, 1, *grid)
        fn = F.max_pool3d if mode == "max" else F.avg_pool3d
        pooled = fn(volume, kernel, stride=kernel, ceil_mode=True)
    else:
        fn = F.max_pool1d if mode == "max" else F.avg_pool1d
        pooled = fn(flat, kernel, stride=kernel, ceil_mode=True)
    return pooled.reshape(*lead, -1)


def _by_class(stack: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """[branch, step, layer, N] float16 → [branch, step, layer, 4] class means (step by step, float32)."""
    out = torch.stack(
        [torch.stack([stack[b, s].float() @ weights for s in range(stack.shape[1])]) for b in range(stack.shape[0])]
    )
    return out.cpu().numpy()


def finish_clip(clip: ClipState, branches: list[str], max_tokens: int) -> ClipResult:
    """Reduce a clip's buffers (one host transfer) into a ClipResult."""
    steps = max(clip.steps.values())
    cond_steps = clip.steps.get("cond", 0)
    present = [b for b in branches if b in clip.drift]
    weights, onehot = class_weights(clip)

    def stacked(store: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([store[b][:steps] for b in present])

    drift = stacked(clip.drift)
    residual = stacked(clip.residual) if clip.residual else None
    plan = pool_plan(clip.grid, clip.tokens, max_tokens)
    kernel, pooled_grid = plan if plan is not None else (None, list(clip.grid) if clip.grid else None)
    tensors = {"drift": pool_tokens(drift, clip.grid, kernel, "mean").half().cpu()}
    if residual is not None:
        tensors["residual_drift"] = pool_tokens(residual, clip.grid, kernel, "mean").half().cpu()
    attention_by_class = None
    attention_steps: list[int] = []
    if clip.attention is not None:
        slots = -(-cond_steps // clip.attention_every)
        attention = clip.attention[:slots]
        seen = clip.attention_seen[:slots]
        attention_steps = [s * clip.attention_every for s in range(slots)]
        sums = torch.zeros(clip.tokens, 3, device=clip.device) if onehot is None else onehot
        shares = torch.stack([attention[s].float() @ sums for s in range(slots)]) / clip.tokens if slots else None
        if shares is not None:
            if onehot is None:
                shares = torch.full_like(shares, float("nan"))
            text = clip.attention_text[:slots].unsqueeze(-1)
            shares = torch.cat([shares, text], dim=-1)
            shares = torch.where(seen.unsqueeze(-1), shares, torch.full_like(shares, float("nan")))
            attention_by_class = shares.cpu().numpy()
        tensors["attention"] = pool_tokens(attention, clip.grid, kernel, "mean").half().cpu()
        if clip.keys > clip.tokens:
            tensors["attention_text"] = clip.attention_text[:slots].half().cpu()
    counts = None
    if clip.classes is not None:
        labels = clip.classes.labels()[0]
        tensors["token_class"] = pool_tokens(labels, clip.grid, kernel, "max").to(torch.int8).cpu()
        counts = {name: int(value[0]) for name, value in clip.classes.counts().items()}
    modulation = None
    if clip.modulation and all(s in clip.modulation for s in range(cond_steps)):
        modulation = torch.stack([clip.modulation[s] for s in range(cond_steps)]).cpu()
    series = torch.stack([clip.timesteps[:cond_steps], clip.output_change[:cond_steps]]).cpu().tolist()
    return ClipResult(
        name=clip.name,
        grid=clip.grid,
        token_counts=counts,
        steps=steps,
        timesteps=series[0],
        output_change=series[1][1:],
        modulation=modulation,
        drift_by_class=_by_class(drift, weights),
        residual_by_class=_by_class(residual, weights) if residual is not None else None,
        attention_by_class=attention_by_class,
        attention_steps=attention_steps,
        tensors=tensors,
        pool=kernel,
        pooled_grid=pooled_grid,
        tokens=clip.tokens,
        hidden_dim=clip.hidden_dim,
        element_size=clip.element_size,
        text_len=clip.text_len,
        notes=list(clip.notes),
    )


def describe_tensors(result: ClipResult, branches: list[str]) -> dict[str, Any]:
    """The `tensors` record of profile.json for the first clip's arrays."""
    return {
        "file": "tensors.safetensors",
        **{name: list(t.shape) for name, t in result.tensors.items()},
        "axes": {
            "drift": ["branch", "step", "layer", "token"],
            "residual_drift": ["branch", "step", "layer", "token"],
            "attention": ["attention_step", "layer", "token"],
            "attention_text": ["attention_step", "layer"],
            "token_class": ["token"],
        },
        "branches": branches,
        "attention_steps": result.attention_steps,
        "pooled": result.pool is not None,
        "pool": result.pool,
        "token_grid": result.pooled_grid,
        "tokens": result.tokens,
        "drift_first_step": "0: step 0 has no previous step",
        "drift_units": "per token: sum|x_t - x_(t-1)| / sum|x_(t-1)| over channels",
        "attention_units": "share of the generative queries' attention mass on the key x number of video tokens "
        "(1 = uniform); attention_text: share on text keys (joint attention)",
        "token_class_codes": {str(k): v for k, v in TOKEN_CLASS_CODES.items()},
        "token_class_pooling": "max: a pooled token takes the highest class of its tokens" if result.pool else None,
    }
