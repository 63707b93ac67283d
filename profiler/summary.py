"""Summaries across clips: per-layer drift and attention by token class, the headroom verdict, the printed table."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from hetcache.cli_common import format_table

from .reduce import CLASS_AXIS, ClipResult

CLASSES = CLASS_AXIS[:3]


def _nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _layer_table(arrays: list[np.ndarray], layers: int, width: int) -> np.ndarray:
    """Mean over every leading axis and clip of [..., layer, width] arrays → [layer, width] (NaN where empty)."""
    rows = [a.reshape(-1, layers, width) for a in arrays if a is not None and a.size]
    if not rows:
        return np.full((layers, width), np.nan)
    return _nanmean(np.concatenate(rows, axis=0))


def drift_table(results: list[ClipResult], layers: int, residual: bool = False) -> np.ndarray:
    """[layer, 4] mean drift (generative, margin, context, all) over clips, branches and steps > 0."""
    arrays = [(r.residual_by_class if residual else r.drift_by_class) for r in results]
    return _layer_table([a[:, 1:] for a in arrays if a is not None], layers, len(CLASS_AXIS))


def attention_table(results: list[ClipResult], layers: int) -> np.ndarray:
    """[layer, 4] share of the generative queries' attention on generative, margin, context and text keys."""
    return _layer_table([r.attention_by_class for r in results], layers, 4)


def _record(row: np.ndarray, keys: tuple[str, ...]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in zip(keys, row, strict=True)}


def layer_records(
    layers: list[dict[str, Any]],
    results: list[ClipResult],
    times_ms: list[float],
    flops: list[dict[str, float]],
    memory: list[int],
    joint_text: bool,
) -> list[dict[str, Any]]:
    """The `layers` list of profile.json."""
    drift = drift_table(results, len(layers))
    residual = drift_table(results, len(layers), residual=True)
    attention = attention_table(results, len(layers))
    records = []
    for i, layer in enumerate(layers):
        attention_to = _record(attention[i, :3], CLASSES)
        if joint_text:
            attention_to["text"] = _record(attention[i, 3:], ("text",))["text"]
        records.append(
            {
                **layer,
                "drift": _record(drift[i], CLASS_AXIS),
                "residual_drift": _record(residual[i], CLASS_AXIS),
                "attention_to": attention_to,
                "time_ms": times_ms[i],
                "memory_bytes": memory[i],
                "flops": flops[i],
            }
        )
    return records


def headroom(
    step_curve: dict[str, Any],
    results: list[ClipResult],
    layers: list[dict[str, Any]],
    steps: int,
    small_change: float,
    workload: dict[str, Any],
) -> dict[str, Any]:
    """What caching can save on this model and workload, in numbers and one sentence, with warnings."""
    changes = np.asarray([c for c in step_curve["output_change"] if c is not None and math.isfinite(c)])
    small_share = float(np.mean(changes < small_change)) if changes.size else float("nan")
    counted = [r.token_counts for r in results if r.token_counts]
    context_share = (
        float(np.mean([c["context"] / max(1, sum(c.values())) for c in counted])) if counted else float("nan")
    )
    drift = drift_table(results, len(layers))
    generative, context = _nanmean(drift[:, 0]), _nanmean(drift[:, 2])
    ratio = float(context / generative) if counted and generative > 0 else float("nan")
    key = "context" if counted and any(layer["drift"]["context"] is not None for layer in layers) else "all"
    ranked = sorted(
        (layer for layer in layers if layer["drift"][key] is not None), key=lambda layer: layer["drift"][key]
    )
    least = [layer["name"] for layer in ranked[: max(1, min(5, math.ceil(len(layers) / 4)))]]

    has_mask = bool(counted)
    if small_share >= 0.4 and (not has_mask or (context_share >= 0.5 and not ratio > 1.0)):
        level = "high"
    elif small_share < 0.15 and (not has_mask or context_share < 0.3):
        level = "low"
    else:
        level = "moderate"
    parts = [f"{level} headroom: {small_share:.0%} of steps change the model output by less than {small_change:g}"]
    if has_mask:
        drifting = f", drifting {ratio:.2f}× as much as generative tokens" if math.isfinite(ratio) else ""
        parts.append(f"{context_share:.0%} of tokens are context{drifting}")
    if least:
        parts.append(f"least-drifting layers: {', '.join(least)}")
    warnings_ = []
    if steps <= 10:
        warnings_.append(
            f"only {steps} denoising steps: a few-step or distilled model leaves little room to reuse steps; "
            "savings must come from PARTIAL steps and layer schedules."
        )
    if not has_mask:
        warnings_.append(
            "no edit mask: token classes are unknown, drift and attention cover all tokens; only step-level "
            "caching and layer schedules apply."
        )
    elif context_share < 0.3:
        warnings_.append(
            f"little context: only {context_share:.0%} of tokens are context, so PARTIAL steps save little."
        )
    if has_mask and ratio > 1.0:
        warnings_.append(f"context tokens drift more than generative ones ({ratio:.2f}×): reusing them is risky.")
    r2 = step_curve.get("fit_r2")
    if r2 is not None and math.isfinite(r2) and r2 < 0.8:
        warnings_.append(f"the rescaling polynomial fits the step curve poorly (R² {r2:.2f}); prefer an explicit plan.")
    if step_curve.get("fit_note"):
        warnings_.append(step_curve["fit_note"] + ".")
    if workload.get("weights") == "random":
        warnings_.append("random weights: drift and the step curve say nothing about a trained model.")
    return {
        "verdict": "; ".join(parts) + ".",
        "warnings": warnings_,
        "level": level,
        "small_change_step_share": small_share,
        "small_change_threshold": small_change,
        "context_token_share": context_share,
        "context_vs_generative_drift": ratio,
        "least_drifting_layers": least,
    }


def _value(value: float | None) -> float:
    return float("nan") if value is None else value


def summary_text(data: dict[str, Any]) -> str:
    """The table and lines `hetcache-profile` prints at the end."""
    rows = []
    for layer in data["layers"]:
        d, a = layer["drift"], layer["attention_to"]
        rows.append(
            {
                "layer": layer["name"],
                "drift G": _value(d["generative"]),
                "drift M": _value(d["margin"]),
                "drift C": _value(d["context"]),
                "drift all": _value(d["all"]),
                "resid all": _value(layer["residual_drift"]["all"]),
                "attn→G": _value(a["generative"]),
                "attn→C": _value(a["context"]),
                "ms": _value(layer["time_ms"]),
            }
        )
    curve = data["step_curve"]
    poly = ", ".join(f"{c:.6g}" for c in curve["polynomial"])
    lines = [
        format_table(rows),
        "",
        f"step curve ({curve['modulation_source']}): polynomial [{poly}] (degree {curve['degree']}, "
        f"R² {_value(curve['fit_r2']):.3f}, {curve['points']} points)",
        f"headroom: {data['headroom']['verdict']}",
    ]
    lines += [f"warning: {w}" for w in data["headroom"]["warnings"]]
    return "\n".join(lines)
