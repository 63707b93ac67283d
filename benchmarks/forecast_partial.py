"""Why the forecast hurts token-level plans: per-step error of computed and skipped tokens, with and without it.

On PARTIAL steps the forecast (`cache.forecast: "linear"`) extrapolates the skipped tokens' cached skip rows from
the last two FULL steps to this step; on a plan such as `FFPPPPPPPF` that is an extrapolation over up to seven
FULL-step intervals from one early difference. Each run is against the uncached run of the same seed under the same
editing contract; per step, the relative deviation of the conditional velocity (mean |cached − uncached| / mean
|uncached|) at the latent cells of the computed tokens (generative + margin) and of the skipped ones (context), and
the mean squared deviation of the final latents inside the mask and beyond the VAE's reach. Variants: no forecast,
the forecast with no horizon (the skip rows extrapolated over the whole PARTIAL run), with the skip rows extrapolated
over at most one or two FULL-step intervals (`cache.forecast_skip_horizon: 1`, `2`), and on REUSE steps only
(horizon 0). Numbers
come from the tiny reference model: orderings, not magnitudes.

    OMP_NUM_THREADS=1 python benchmarks/forecast_partial.py [--size 128 --frames 9 --steps 10]
        [--plans FFPPPPPPPF,FFPRPRPRPF] [--contracts none,blend] [--out benchmarks/results/forecast_partial.json]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import torch
from partial_error import BASE, StepTap, computed_cells

from hetcache.reference.evaluate import deviation
from hetcache.stationarity import HELD_OUT
from hetcache.workloads import ClipSource, Workload
from hetcache.workloads.execute import LoadedWorkload

POLICY = BASE.replace(margin_ratio=1.0, context_ratio=0.0, refresh_skipped_kv=True)  # margin computed, context not
VARIANTS = {
    "no_forecast": {},
    "forecast": {"forecast": "linear"},  # skip rows extrapolated over the whole PARTIAL run (no horizon)
    "forecast_horizon_1": {"forecast": "linear", "forecast_skip_horizon": 1.0},
    "forecast_horizon_2": {"forecast": "linear", "forecast_skip_horizon": 2.0},
    "forecast_reuse_only": {"forecast": "linear", "forecast_skip_horizon": 0.0},
}


def step_errors(ref: dict[int, list[torch.Tensor]], out: dict[int, list[torch.Tensor]], cells: torch.Tensor):
    """Per step: relative velocity deviation at the computed cells and at the skipped ones."""
    rows = []
    for step in sorted(ref):
        r, c = ref[step][0], out[step][0]
        diff = (c - r).abs()
        computed, skipped = cells.expand_as(r), ~cells.expand_as(r)
        rows.append(
            {
                "computed": float(diff[computed].mean() / r.abs()[computed].mean()),
                "skipped": float(diff[skipped].mean() / r.abs()[skipped].mean()),
            }
        )
    return rows


def measure(session: LoadedWorkload, plans: Sequence[str]) -> dict[str, Any]:
    timesteps = {i: float(t) for i, t in enumerate(session.timesteps())}
    per_clip: dict[str, Any] = {}
    for clip in session.clips:
        tap = StepTap(session.transformer, timesteps)
        try:
            reference = session.generate(clip, decode=False).latents
        finally:
            tap.handle.remove()
        cells = computed_cells(clip, tap.outputs[0][0].shape, POLICY.tokens.margin_width)
        per_clip[clip.name] = {}
        for plan in plans:
            for name, changes in VARIANTS.items():
                cached = StepTap(session.transformer, timesteps)
                try:
                    generation, stats = session.generate_cached(
                        clip, POLICY.replace(**changes), strict=False, plan=plan, decode=False
                    )
                finally:
                    cached.handle.remove()
                per_clip[clip.name][f"{plan}/{name}"] = {
                    "final": deviation(reference, generation.latents, clip),
                    "steps": step_errors(tap.outputs, cached.outputs, cells),
                    "decisions": stats["decisions"],
                    "flops_fraction": stats["flops_fraction"],
                }
    return per_clip


def summary(per_clip: dict[str, Any]) -> dict[str, Any]:
    """Medians over clips."""
    first = next(iter(per_clip.values()))
    out = {}
    for key, row in first.items():
        clips = [c[key] for c in per_clip.values()]
        out[key] = {
            "final_inside": statistics.median(c["final"]["inside"] for c in clips),
            "final_outside": statistics.median(c["final"]["outside"] for c in clips),
            "flops_fraction": row["flops_fraction"],
            "decisions": row["decisions"],
            "steps": [
                {kind: statistics.median(c["steps"][i][kind] for c in clips) for kind in ("computed", "skipped")}
                for i in range(len(row["steps"]))
            ],
        }
    return out


def table(contract: str, summ: dict[str, Any]) -> str:
    steps = len(next(iter(summ.values()))["steps"])
    lines = [
        f"contract {contract}: velocity deviation per step, computed / skipped tokens (median over clips); final "
        "latent MSE inside / beyond reach",
        "| plan / variant | " + " | ".join(f"s{i}" for i in range(steps)) + " | final in / out |",
        "|---|" + "---|" * (steps + 1),
    ]
    for key, row in summ.items():
        cells = [f"{s['computed']:.3f}/{s['skipped']:.3f}" for s in row["steps"]]
        final = f"{row['final_inside']:.2e} / {row['final_outside']:.2e}"
        lines.append(f"| {key} ({row['decisions']}) | " + " | ".join(cells) + f" | {final} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--plans", default="FFPPPPPPPF,FFPRPRPRPF")
    parser.add_argument("--contracts", default="none,blend")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/forecast_partial.json"))
    args = parser.parse_args(argv)
    plans = args.plans.split(",")
    bad = [p for p in plans if len(p) != args.steps or set(p) - set("FPR")]
    if bad:
        parser.error(f"--plans {','.join(bad)}: each plan needs {args.steps} letters of F/P/R (one per step)")
    sources = tuple(ClipSource(f"{kind}-{seed}", kind=kind, seed=seed) for kind, seed in HELD_OUT)
    record: dict[str, Any] = {"what": "per-step deviation with and without the forecast (tiny reference model)"}
    for contract in args.contracts.split(","):
        workload = Workload(
            height=args.size,
            width=args.size,
            num_frames=args.frames,
            steps=args.steps,
            clips=sources,
            contract=contract,
        )
        per_clip = measure(LoadedWorkload(workload), plans)
        summ = summary(per_clip)
        record[contract] = {"workload": workload.to_dict(), "summary": summ, "clips": per_clip}
        print(table(contract, summ), flush=True)
    harness.write_result(args.out, record, script="forecast_partial.py", argv=argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
