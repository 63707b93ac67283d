"""Plotly figures of the dashboard: pure functions from loaded data to `go.Figure` (no Streamlit here)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hetcache.plan import rescale
from hetcache.steps import FULL, PARTIAL, REUSE, STEP_NAMES

PLAN_CODES = {FULL: 2, PARTIAL: 1, REUSE: 0}
PLAN_NAMES = STEP_NAMES
PLAN_COLOURS = [(0.0, "#d9d9d9"), (0.33, "#d9d9d9"), (0.33, "#6baed6"), (0.66, "#6baed6"), (0.66, "#08306b")]
PLAN_COLOURS.append((1.0, "#08306b"))
CLASS_LINE = "#ff7f0e"
MAX_MAP_COLUMNS = 6
PARTS_ORDER = ("self_attention", "cross_attention", "ffn", "vace")
FRONT_COLOURS = {"Best Trial": "#d62728", "Feasible Trial": "#1f77b4", "Infeasible Trial": "#bbbbbb"}


def drift_heatmaps(per_class: Mapping[str, np.ndarray], layer_names: Sequence[str], steps: Sequence[int]) -> go.Figure:
    """Mean drift per layer × step, one panel per token class, on one colour scale."""
    names = list(per_class)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names, horizontal_spacing=0.03)
    for col, name in enumerate(names, start=1):
        fig.add_trace(
            go.Heatmap(
                z=per_class[name],
                x=list(steps),
                y=list(layer_names),
                name=name,
                coloraxis="coloraxis",
                hovertemplate="layer %{y}<br>step %{x}<br>drift %{z:.4g}<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="step", dtick=1, row=1, col=col)
    fig.update_layout(
        title="Block-output drift (mean relative change) by token class",
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": "drift"}},
        yaxis={"autorange": "reversed", "title": "layer"},
        height=120 + 28 * max(len(layer_names), 4),
    )
    return fig


def token_maps(values: np.ndarray, classes: np.ndarray | None, title: str, quantity: str) -> go.Figure:
    """Per-token values [T', h, w] over the latent frames, with the generative/margin boundaries drawn on top."""
    frames = values.shape[0]
    cols = min(frames, MAX_MAP_COLUMNS)
    rows = math.ceil(frames / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"latent frame {i}" for i in range(frames)],
        horizontal_spacing=0.02,
        vertical_spacing=0.08,
    )
    for i in range(frames):
        row, col = divmod(i, cols)
        fig.add_trace(
            go.Heatmap(
                z=values[i],
                coloraxis="coloraxis",
                name=f"frame {i}",
                hovertemplate="x %{x}, y %{y}<br>" + quantity + " %{z:.4g}<extra>frame " + str(i) + "</extra>",
            ),
            row=row + 1,
            col=col + 1,
        )
        if classes is not None:
            fig.add_trace(
                go.Contour(
                    z=classes[i].astype(float),
                    contours={"start": 0.5, "end": 1.5, "size": 1.0, "coloring": "none"},
                    line={"color": CLASS_LINE, "width": 2},
                    showscale=False,
                    hoverinfo="skip",
                    name="token classes",
                    showlegend=i == 0,
                ),
                row=row + 1,
                col=col + 1,
            )
    fig.update_yaxes(autorange="reversed", scaleanchor=None, showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title=title,
        coloraxis={"colorscale": "Inferno", "colorbar": {"title": quantity}},
        height=80 + 230 * rows,
        legend={"orientation": "h", "y": -0.05},
    )
    return fig


def step_change(
    modulation: Sequence[float], output: Sequence[float], polynomial: Sequence[float] | None, fit_r2: float | None
) -> go.Figure:
    """Left: per-step modulation and output change; right: output vs modulation change with the fitted polynomial."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("change between steps", "output change vs modulation change (fit)")
    )
    steps = list(range(1, len(modulation) + 1))
    fig.add_trace(go.Scatter(x=steps, y=list(modulation), mode="lines+markers", name="modulation change"), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=list(output), mode="lines+markers", name="output change"), 1, 1)
    fig.add_trace(
        go.Scatter(
            x=list(modulation), y=list(output), mode="markers", name="measured", text=[f"step {s}" for s in steps]
        ),
        1,
        2,
    )
    if polynomial and len(modulation) > 0:
        xs = np.linspace(min(modulation), max(modulation), 64)
        label = "fitted polynomial" + (f" (R² {fit_r2:.3f})" if fit_r2 is not None else "")
        fig.add_trace(
            go.Scatter(x=xs.tolist(), y=rescale(xs.tolist(), tuple(polynomial)), mode="lines", name=label), 1, 2
        )
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="modulation change", row=1, col=2)
    fig.update_yaxes(title_text="relative L1 change", row=1, col=1)
    fig.update_yaxes(title_text="output change", row=1, col=2)
    fig.update_layout(title="Step-change curve", height=380)
    return fig


def layer_cost(layers: Sequence[Mapping]) -> go.Figure:
    """Analytic GFLOPs per layer split by part (stacked bars) and measured time per layer (line)."""
    names = [str(layer.get("name", i)) for i, layer in enumerate(layers)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    parts = [p for p in PARTS_ORDER if any((layer.get("flops") or {}).get(p) for layer in layers)]
    for part in parts:
        fig.add_trace(
            go.Bar(
                x=names, y=[float((layer.get("flops") or {}).get(part) or 0.0) / 1e9 for layer in layers], name=part
            ),
            secondary_y=False,
        )
    times = [layer.get("time_ms") for layer in layers]
    if any(t is not None for t in times):
        memory = [layer.get("memory_bytes") for layer in layers]
        fig.add_trace(
            go.Scatter(
                x=names,
                y=times,
                mode="lines+markers",
                name="time (ms)",
                customdata=[[m / 2**20 if m else 0.0] for m in memory],
                hovertemplate="%{x}: %{y:.3g} ms, %{customdata[0]:.1f} MiB<extra></extra>",
            ),
            secondary_y=True,
        )
    fig.update_layout(title="Cost per layer", barmode="stack", height=380)
    fig.update_yaxes(title_text="GFLOPs per forward", secondary_y=False)
    fig.update_yaxes(title_text="time per forward (ms)", secondary_y=True)
    return fig


def pareto_front(
    points: Mapping[str, Sequence[tuple[int, float, float]]], metric: str, speedup_label: str, bound: float | None
) -> go.Figure:
    """Speedup vs a quality metric, one trace per group ("Best Trial": the tuner's front), the budget bound drawn in.

    `points` maps a group name to (trial number, metric value, speedup) triples; the hover text names the trial.
    """
    fig = go.Figure()
    for name, rows in points.items():
        if not rows:
            continue
        colour = FRONT_COLOURS.get(name)
        fig.add_trace(
            go.Scatter(
                x=[x for _, x, _ in rows],
                y=[y for _, _, y in rows],
                mode="markers",
                name=name,
                text=[json.dumps({"number": n, metric: x, speedup_label: y}) for n, x, y in rows],
                hovertemplate="%{text}<extra>" + name + "</extra>",
                marker={"color": colour, "size": 11 if name == "Best Trial" else 8} if colour else {},
            )
        )
    if bound is not None:
        fig.add_vline(
            x=bound,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=f"budget {metric} = {bound:g}",
            annotation_position="top",
        )
    fig.update_layout(
        title=f"Pareto front: {speedup_label} vs {metric}",
        xaxis={"title": {"text": metric}},
        yaxis={"title": {"text": speedup_label}},
        height=460,
        legend={"orientation": "h", "y": -0.2, "x": 0},
    )
    return fig


def plan_timeline(plans: Mapping[str, str]) -> go.Figure:
    """One row per named plan, one cell per denoising step: FULL / PARTIAL / REUSE."""
    names = list(plans)
    width = max((len(p) for p in plans.values()), default=0)
    z = [[PLAN_CODES[c] for c in plans[n]] + [None] * (width - len(plans[n])) for n in names]
    text = [list(plans[n]) + [""] * (width - len(plans[n])) for n in names]
    hover = [[PLAN_NAMES.get(c, "") for c in row] for row in text]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=names,
            text=text,
            customdata=hover,
            texttemplate="%{text}",
            colorscale=PLAN_COLOURS,
            zmin=0,
            zmax=2,
            showscale=False,
            xgap=2,
            ygap=4,
            hovertemplate="%{y}<br>step %{x}: %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Step plan (F = full, P = partial, R = reuse)",
        xaxis={"title": "denoising step", "dtick": 1},
        yaxis={"autorange": "reversed", "automargin": True},
        height=130 + 44 * len(names),
        margin={"t": 50, "b": 50, "l": 10, "r": 10},
    )
    return fig


def active_share(shares: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Share of tokens each block computes over the run, one bar group per block, one colour per policy."""
    fig = go.Figure()
    for name, per_layer in shares.items():
        fig.add_trace(go.Bar(x=list(per_layer), y=list(per_layer.values()), name=name))
    fig.update_layout(
        title="Active-token share per block (mean over steps)",
        barmode="group",
        yaxis={"title": "share of tokens computed", "range": [0, 1.05]},
        height=380,
    )
    return fig


def frame_series(values: Mapping[str, Sequence[float]], current: int, title: str, unit: str) -> go.Figure:
    """Per-frame curves (e.g. PSNR per region) with the selected frame marked."""
    fig = go.Figure()
    for name, series in values.items():
        fig.add_trace(go.Scatter(x=list(range(len(series))), y=list(series), mode="lines+markers", name=name))
    fig.add_vline(x=current, line_dash="dot", line_color="#888888")
    fig.update_layout(title=title, xaxis={"title": "frame"}, yaxis={"title": unit}, height=340)
    return fig
