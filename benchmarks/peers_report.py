"""Output of the peers benchmark: the markdown table, the equal-FLOPs goal check, the plotly figure, the files."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Any

from hetcache.atomic import atomic_path, write_json, write_text
from hetcache.contracts import contract_note
from hetcache.metrics import PSNR_CAP

FLOPS_METHOD = (
    "analytic (hetcache.cost.CostModel): hetcache rows from the engine's stats; every other row counts the "
    "self-attention, cross-attention, FFN and VACE projections that really execute (forward pre-hooks on their "
    "first projection) times the per-module cost; embeddings and head on every forward; norms, RoPE, softmax and "
    "cache bookkeeping are left out on both sides"
)
TUNED = "HetCache, tuned"
PAPER_EVAL = "HetCache, paper settings, paper's evaluation (paste, whole frame)"
COLORS = {  # one colour per method, the same in every run (hetcache rows warm, the field cool, baselines grey)
    "fewer steps": "#444444",
    "timestep-only reuse (TeaCache-style)": "#8c564b",
    "diffusers FirstBlockCache": "#1f77b4",
    "diffusers MagCache": "#17becf",
    "diffusers TaylorSeer": "#9467bd",
    "diffusers PyramidAttentionBroadcast": "#7f7f7f",
    "cache-dit DBCache": "#2ca02c",
    "HetCache, paper settings": "#ff7f0e",
    PAPER_EVAL: "#ffbb78",
    TUNED: "#d62728",
}
SPARE_COLORS = ("#bcbd22", "#e377c2", "#aec7e8")
SKIP_IN_GOAL = ("uncached", TUNED, PAPER_EVAL)  # the paper's evaluation row is scored under another contract
NO_SAVINGS = 0.999  # rows at this FLOPs fraction or above cached nothing: they are the uncached run


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _memory(row: dict[str, Any]) -> str:
    if row.get("peak_memory_bytes") is not None:
        return f"{row['peak_memory_bytes'] / 2**30:.2f} GiB"
    return "n/a (CPU)"


def table(rows: list[dict[str, Any]], contract: str = "none") -> str:
    """The markdown table: one line per method and operating point (`contract`: the benchmark's)."""
    head = [
        "method",
        "setting",
        "FLOPs",
        "speedup (time)",
        "speedup (FLOPs)",
        "contract",
        "PSNR",
        "PSNR mask",
        "PSNR seam",
        "SSIM",
        "SSIM mask",
        "peak memory",
        "correctness (replay)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        note = (row.get("correctness") or {}).get("note", "")
        if row.get("unavailable"):
            cells = [row["method"], row["setting"], *["—"] * 10, row["unavailable"]]
        else:
            q = row["quality"]
            spread = f"{_fmt(row['speedup_time'])}x ({_fmt(row['speedup_time_min'])}–{_fmt(row['speedup_time_max'])})"
            cells = [
                row["method"],
                row["setting"],
                f"{row['flops_fraction']:.0%}",
                spread,
                f"{_fmt(row['speedup_flops'])}x",
                row.get("contract") or contract,
                _fmt(q.get("psnr")),
                _fmt(q.get("psnr_mask")),
                _fmt(q.get("psnr_seam")),
                _fmt(q.get("ssim"), 4),
                _fmt(q.get("ssim_mask"), 4),
                _memory(row),
                note,
            ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _at_flops(points: list[dict[str, Any]], fraction: float, metric: str) -> tuple[float, str]:
    """A curve's `metric` at a FLOPs fraction: interpolated inside its range, else its nearest point, and where that
    point lies: 'equal', 'higher' (the curve's cheapest point costs more) or 'lower' (its dearest costs less)."""
    pts = sorted((p["flops_fraction"], p["quality"][metric]) for p in points)
    if fraction <= pts[0][0]:
        return pts[0][1], "higher" if fraction < pts[0][0] - 1e-9 else "equal"
    if fraction >= pts[-1][0]:
        return pts[-1][1], "lower" if fraction > pts[-1][0] + 1e-9 else "equal"
    for (f0, q0), (f1, q1) in itertools.pairwise(pts):
        if f0 <= fraction <= f1:
            share = 0.0 if f1 == f0 else (fraction - f0) / (f1 - f0)
            return q0 + share * (q1 - q0), "equal"
    raise AssertionError("unreachable")


def goal_check(rows: list[dict[str, Any]], metrics: tuple[str, str] = ("psnr", "psnr_mask")) -> list[dict[str, Any]]:
    """For every other row: the two `metrics` (the contract's headline: frame and mask for the raw output, mask and
    seam under paste or blend) of the tuned HetCache curve at that row's FLOPs, and who is higher.

    Rows that saved nothing are left out. The tuned curve is interpolated linearly in FLOPs between the tuned points
    (those identical to uncached are left out: their capped PSNR would lift the interpolation arbitrarily). Where the
    row costs more than every tuned point, the dearest tuned point stands in (it spends less, so a win still holds at
    equal FLOPs); where the row costs less than every tuned point, no tuned policy is that cheap: not compared.
    """
    done = [r for r in rows if not r.get("unavailable")]
    tuned = [r for r in done if r["method"] == TUNED]
    # A tuned point identical to uncached (PSNR capped at PSNR_CAP) would make interpolation towards it arbitrary.
    first, second = metrics
    tuned = [r for r in tuned if r["quality"][first] < PSNR_CAP] or tuned
    if not tuned:
        return []
    out = []
    for row in (r for r in done if r["method"] not in SKIP_IN_GOAL and r["flops_fraction"] < NO_SAVINGS):
        fraction = row["flops_fraction"]
        a, where = _at_flops(tuned, fraction, first)
        b, _ = _at_flops(tuned, fraction, second)
        comparable = where != "higher"
        out.append(
            {
                "method": row["method"],
                "setting": row["setting"],
                "flops_fraction": fraction,
                "metrics": list(metrics),
                first: row["quality"][first],
                second: row["quality"][second],
                f"{first}_tuned": a,
                f"{second}_tuned": b,
                "tuned_cost": where,
                "comparable": comparable,
                "tuned_better": comparable and a > row["quality"][first] and b > row["quality"][second],
            }
        )
    return out


def goal_table(goal: list[dict[str, Any]]) -> str:
    first, second = goal[0].get("metrics", ("psnr", "psnr_mask"))
    head = ["row", "FLOPs", f"{first} row / tuned", f"{second} row / tuned", "tuned HetCache better?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in goal:
        if not g["comparable"]:
            verdict = "not comparable: no tuned policy is this cheap"
        else:
            where = " (tuned at its dearest point, which costs less)" if g["tuned_cost"] == "lower" else ""
            verdict = ("yes" if g["tuned_better"] else "**no**") + where
        lines.append(
            f"| {g['method']} [{g['setting']}] | {g['flops_fraction']:.0%} | {_fmt(g[first])} / "
            f"{_fmt(g[f'{first}_tuned'])} | {_fmt(g[second])} / {_fmt(g[f'{second}_tuned'])} | {verdict} |"
        )
    return "\n".join(lines)


def closing_note(report: dict[str, Any]) -> str:
    """What the numbers say about the goal, and the caveats that apply to this run."""
    goal = report["goal"]
    notes = []
    if report["weights"] == "random":
        notes.append(
            "Random weights: the model barely depends on its input, so the quality columns say nothing about which "
            "method is better on a real model; this run checks the harness, the speed and the correctness notes."
        )
    if not goal:
        notes.append("No tuned HetCache policy ran, so the equal-FLOPs goal was not checked.")
        return "\n\n".join(notes)
    compared = [g for g in goal if g["comparable"]]
    lost = [f"{g['method']} [{g['setting']}]" for g in compared if not g["tuned_better"]]
    beyond = [f"{g['method']} [{g['setting']}]" for g in goal if not g["comparable"]]
    wins = len(compared) - len(lost)
    first, second = goal[0].get("metrics", ("psnr", "psnr_mask"))
    text = f"Equal-FLOPs goal: the tuned HetCache curve is higher in {first} and {second} than {wins} of the "
    text += f"{len(compared)} rows it can be compared with."
    if lost:
        text += " Not higher than: " + "; ".join(lost) + "."
    if beyond:
        text += " Cheaper than every tuned policy (not compared): " + "; ".join(beyond) + "."
    notes.append(text)
    return "\n\n".join(notes)


def markdown(report: dict[str, Any]) -> str:
    """The whole markdown report: context, table, goal table, closing note."""
    w = report["workload"]
    contract = w.get("contract", "none")
    note = contract_note(contract)
    header = (
        f"Workload: {w['name']} ({report['weights']} weights), {w['height']}x{w['width']}x{w['num_frames']}, "
        f"{w['steps']} steps, guidance {w['guidance_scale']}, seed {w['seed']}, clips "
        f"{', '.join(c['name'] for c in w['clips'])}; device {report['device_name']} ({w['dtype']}, "
        f"{report['threads']} threads); {report['reps']} interleaved rounds, speedup = median (min–max over rounds) "
        f"of the summed denoising time. Quality vs the uncached output of the same seed under the same editing "
        f"contract, `{contract}` (mean over clips).{' ' + note if note else ''}\n\n"
        f"Command: `{report['command']}`\n\nFLOPs: {report['flops_method']}."
    )
    parts = [header, table(report["rows"], contract)]
    paper = [r for r in report["rows"] if r["method"] == PAPER_EVAL and not r.get("unavailable")]
    for row in paper:
        q = row["quality"]
        parts.append(
            f"The paper's own evaluation ({row['setting']}): the HetCache reference code pastes the source back and "
            f"scores the whole frame, which is a function of the mask's area: {_fmt(q.get('psnr'))} dB whole-frame "
            f"PSNR against the pasted uncached output ({_fmt(q.get('psnr_mask'))} dB in the mask); against the "
            f"source clip, the code's own reference, {_fmt(q.get('psnr_vs_source'))} dB cached and "
            f"{_fmt(q.get('psnr_uncached_vs_source'))} dB uncached (the model's inpainting error, not caching's)."
        )
    if report["goal"]:
        parts += ["Equal-FLOPs goal:", goal_table(report["goal"])]
    parts.append(closing_note(report))
    return "\n\n".join(parts) + "\n"


def figure(report: dict[str, Any]):
    """Speedup vs PSNR, one trace per method: wall-clock vs whole-frame PSNR, FLOPs vs in-mask PSNR."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("wall-clock speedup vs PSNR (frame)", "FLOPs speedup vs PSNR (inside the mask)"),
    )
    # The uncached run and outputs identical to it (PSNR capped) would only squash the scale: they are not drawn.
    rows = [
        r
        for r in report["rows"]
        if not r.get("unavailable") and r["method"] != "uncached" and r["quality"]["psnr"] < PSNR_CAP
    ]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for index, method in enumerate(methods):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["speedup_flops"])
        color = COLORS.get(method, SPARE_COLORS[index % len(SPARE_COLORS)])
        labels = [r["setting"] for r in pts]
        fig.add_trace(
            go.Scatter(
                x=[r["speedup_time"] for r in pts],
                y=[r["quality"]["psnr"] for r in pts],
                error_x=dict(
                    type="data",
                    symmetric=False,
                    array=[r["speedup_time_max"] - r["speedup_time"] for r in pts],
                    arrayminus=[r["speedup_time"] - r["speedup_time_min"] for r in pts],
                ),
                mode="lines+markers",
                name=method,
                legendgroup=method,
                text=labels,
                marker=dict(color=color, size=9),
                line=dict(color=color),
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[r["speedup_flops"] for r in pts],
                y=[r["quality"]["psnr_mask"] for r in pts],
                mode="lines+markers",
                name=method,
                legendgroup=method,
                showlegend=False,
                text=labels,
                marker=dict(color=color, size=9),
                line=dict(color=color),
            ),
            row=1,
            col=2,
        )
    w = report["workload"]
    fig.update_layout(
        title=f"Caching methods on {w['name']} ({report['weights']} weights, {w['height']}x{w['width']}x"
        f"{w['num_frames']}, {w['steps']} steps, {report['device_name']}); outputs identical to uncached not drawn",
        width=1300,
        height=560,
        template="plotly_white",
    )
    fig.update_xaxes(title_text="speedup (median, bars: min–max)", row=1, col=1)
    fig.update_xaxes(title_text="FLOPs speedup", row=1, col=2)
    fig.update_yaxes(title_text="PSNR vs uncached (dB)", row=1, col=1)
    fig.update_yaxes(title_text="in-mask PSNR vs uncached (dB)", row=1, col=2)
    return fig


def write(stem: Path, report: dict[str, Any], figure_wanted: bool = True) -> list[Path]:
    """peers.json, peers.md, peers.html (and peers.png when kaleido can render it), each written atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = [write_json(stem.with_suffix(".json"), report), write_text(stem.with_suffix(".md"), markdown(report))]
    if not figure_wanted:
        return written
    fig = figure(report)
    with atomic_path(stem.with_suffix(".html")) as tmp:
        fig.write_html(str(tmp), include_plotlyjs="cdn")
    written.append(stem.with_suffix(".html"))
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return written  # the PNG needs kaleido (and a Chrome/Chromium); the HTML is the figure
    try:
        with atomic_path(stem.with_suffix(".png"), suffix=".png") as tmp:
            fig.write_image(str(tmp), format="png", scale=1)
    except Exception as exc:  # kaleido raises its own error types when it finds no browser
        print(f"peers: PNG skipped ({type(exc).__name__}: {exc}); the HTML figure was written.", file=sys.stderr)
        return written
    written.append(stem.with_suffix(".png"))
    return written
