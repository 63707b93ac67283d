"""Selecting from a loaded profile what the Profile page draws: per-class drift series and per-token maps.

Everything shown is what the profiler recorded: `drift_by_class` [branch, step, layer, class] for the heatmaps,
`drift` [branch, step, layer, token] and `attention` [attention step, layer, token] for the maps, `token_class` for
the overlay (names of the axes and the pooling are in profile.json's "tensors" record).
"""

from __future__ import annotations

import math

import numpy as np

from .readers import DataError, ProfileView

BY_CLASS = ("generative", "margin", "context", "all")  # last axis of drift_by_class
REPROFILE = "re-run hetcache-profile with this hetcache version."


def _required(profile: ProfileView, name: str, clip: str | None, ndim: int) -> np.ndarray:
    """A recorded array whose layer axis matches profile.json, or DataError."""
    array = profile.array(name, clip)
    if array is None:
        raise DataError(f"profile '{profile.folder}' holds no '{name}' tensor for clip {clip!r}.", REPROFILE)
    if array.ndim != ndim or array.shape[2 if ndim == 4 else 1] != len(profile.layer_names):
        raise DataError(
            f"profile '{profile.folder}': tensor '{name}' has shape {list(array.shape)}, which does not match its "
            f"{len(profile.layer_names)} layers.",
            REPROFILE,
        )
    return array


def branch_names(profile: ProfileView) -> list[str]:
    """Names of the recorded CFG branches, in the order of the tensors' branch axis."""
    count = _required(profile, "drift_by_class", None, 4).shape[0]
    names = [str(b) for b in profile.data.get("branches") or []]
    return names[:count] if len(names) >= count else [f"branch {i}" for i in range(count)]


def class_drift(profile: ProfileView, clip: str | None, branch: int) -> tuple[list[int], dict[str, np.ndarray]]:
    """Steps ≥ 1 and, per token class with tokens, the recorded mean drift as [layer, step]."""
    by_class = _required(profile, "drift_by_class", clip, 4)[branch]  # [step, layer, class]
    steps = list(range(1, by_class.shape[0]))  # step 0 has no previous step: its drift is 0 by definition
    series = {}
    for i, name in enumerate(BY_CLASS[: by_class.shape[-1]]):
        values = by_class[1:, :, i].T
        if np.isfinite(values).any():
            series[name] = values
    return steps, series


def token_grid(profile: ProfileView, clip: str | None) -> tuple[int, int, int] | None:
    """The grid [T', h, w] the per-token axis of `clip` maps onto (pooled or not), or None if it cannot be told."""
    drift = profile.array("drift", clip)
    if drift is None:
        return None
    tokens = drift.shape[-1]
    meta = profile.meta
    record = next((c for c in profile.data.get("clips") or [] if c.get("name") == (clip or profile.clip_names[0])), {})
    candidates = []
    if profile.prefix(clip) == "" and meta.get("token_grid"):
        candidates.append(meta["token_grid"])
    grid = record.get("grid")
    if isinstance(grid, list) and len(grid) == 3:
        candidates.append(grid)
        pool = meta.get("pool")
        if isinstance(pool, list) and len(pool) == 3 and all(isinstance(k, int) and k > 0 for k in pool):
            candidates.append([math.ceil(g / k) for g, k in zip(grid, pool, strict=True)])
    for candidate in candidates:
        if all(isinstance(v, int) and v > 0 for v in candidate) and math.prod(candidate) == tokens:
            return (candidate[0], candidate[1], candidate[2])
    return None


def attention_steps(profile: ProfileView, clip: str | None) -> list[int]:
    """The denoising steps the attention contribution was recorded at (one per slot of the tensor)."""
    attention = profile.array("attention", clip)
    if attention is None:
        return []
    steps = profile.meta.get("attention_steps")
    if isinstance(steps, list) and len(steps) == attention.shape[0]:
        return [int(s) for s in steps]
    return list(range(attention.shape[0]))


def token_map(profile: ProfileView, clip: str | None, quantity: str, branch: int, step: int, layer: int) -> np.ndarray:
    """Per-token drift (or attention contribution) at one step and layer as [T', h, w]."""
    grid = token_grid(profile, clip)
    if grid is None:
        raise DataError(
            f"profile '{profile.folder}': the token axis of clip {clip!r} matches no recorded grid.", REPROFILE
        )
    if quantity == "drift":
        values = _required(profile, "drift", clip, 4)[branch, step, layer]
    else:
        slots = attention_steps(profile, clip)
        if step not in slots:
            raise DataError(f"attention contribution was not recorded at step {step}.", f"pick one of {slots}.")
        values = _required(profile, "attention", clip, 3)[slots.index(step), layer]
    return values.reshape(grid)


def class_grid(profile: ProfileView, clip: str | None) -> np.ndarray | None:
    """Token classes of the clip on the same grid as its maps (0 context, 1 margin, 2 generative)."""
    labels, grid = profile.array("token_class", clip), token_grid(profile, clip)
    if labels is None or grid is None or labels.size != math.prod(grid):
        return None
    return labels.reshape(grid)


def layer_table(profile: ProfileView) -> list[dict]:
    """One row per layer: the summaries profile.json records (drift and attention share per class, cost)."""
    rows = []
    for layer in profile.data.get("layers", []):
        row = {"layer": layer.get("name"), "kind": layer.get("kind")}
        for key in ("drift", "residual_drift", "attention_to"):
            for cls, value in (layer.get(key) or {}).items():
                row[f"{key}.{cls}"] = value
        row["time_ms"] = layer.get("time_ms")
        row["memory_MiB"] = (layer.get("memory_bytes") or 0) / 2**20
        rows.append(row)
    return rows
