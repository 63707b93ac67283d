"""Where a PARTIAL step's error comes from, on the reference workload (trained tiny model, held-out clips).

One PARTIAL (or REUSE) step at an early, middle or late position, every other step FULL, against the uncached run of
the same seed. Up to that step both runs are equal, so the step's own error is exact: generative tokens are computed
against the stale keys/values of the skipped ones (their only error source), skipped tokens take their input plus
the residual cached at the last FULL step. Variants, through the public knobs only:

- reuse: the whole step reused (the upper bound);
- everything_computed: margin_ratio = context_ratio = 1, no token skipped: must equal FULL;
- context_skipped: margin computed, context skipped (stale context K/V + stale context residuals);
  its two channels are separated by splicing that step's output into an uncached run: stale_kv_only takes the cached
  output at the computed tokens only, stale_residual_only at the skipped tokens only;
- kv_refresh: context skipped, but the skipped tokens' keys/values recomputed from their approximated inputs
  (`tokens.refresh_skipped_kv`): what is left once the stale-K/V channel is closed;
- kv_refresh_forecast / reuse_forecast: the same, or a REUSE step, with the cached residuals extrapolated from the
  last two computed steps (`cache.forecast: "linear"`);
- margin_half_skipped / margin_skipped: half / all of the margin skipped too (the margin's share);
- output_fill: skipped tokens take their cached output instead of input + cached residual;
- <selection>_<ratio>: that share of the context recomputed, chosen by stride, attention or k-means.

Deviation: mean squared deviation of the final latents inside the mask, near it and beyond the VAE's reach
(`hetcache.reference.evaluate.latent_regions`), and the relative deviation of that step's conditional velocity in the
same regions. Numbers come from the tiny reference model; use them for orderings, not magnitudes.

    python benchmarks/partial_error.py [--positions 3,10,17] [--out benchmarks/results/partial_error.json]
        [--variants kv_refresh,...]  (only these, merged into the existing --out file of the same workload)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import torch

from hetcache import reference
from hetcache.policy import Policy
from hetcache.reference.evaluate import deviation, latent_regions
from hetcache.stationarity import HELD_OUT
from hetcache.tokens import classify_tokens, pixel_mask_to_token_mask
from hetcache.workloads import ClipSource, Workload
from hetcache.workloads.execute import LoadedWorkload

BASE = Policy(name="partial-error").replace(margin_width=2, skip_fill="residual", selection="stride")
# name: (step letter, policy changes)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "reuse": ("R", {}),
    "everything_computed": ("P", {"margin_ratio": 1.0, "context_ratio": 1.0}),
    "context_skipped": ("P", {"margin_ratio": 1.0, "context_ratio": 0.0}),
    "kv_refresh": ("P", {"margin_ratio": 1.0, "context_ratio": 0.0, "refresh_skipped_kv": True}),
    "kv_refresh_forecast": (
        "P",
        {"margin_ratio": 1.0, "context_ratio": 0.0, "refresh_skipped_kv": True, "forecast": "linear"},
    ),
    "reuse_forecast": ("R", {"forecast": "linear"}),
    "margin_half_skipped": ("P", {"margin_ratio": 0.5, "context_ratio": 0.0}),
    "margin_skipped": ("P", {"margin_ratio": 0.0, "context_ratio": 0.0}),
    "output_fill": ("P", {"margin_ratio": 1.0, "context_ratio": 0.0, "skip_fill": "output"}),
    "stride_0.1": ("P", {"margin_ratio": 1.0, "context_ratio": 0.1}),
    "stride_0.3": ("P", {"margin_ratio": 1.0, "context_ratio": 0.3}),
    "attention_0.3": ("P", {"margin_ratio": 1.0, "context_ratio": 0.3, "selection": "attention"}),
    "kmeans_0.3": ("P", {"margin_ratio": 1.0, "context_ratio": 0.3, "selection": "kmeans"}),
}
SPLICED = "context_skipped"  # the variant whose two error channels are separated


class StepTap:
    """Forward hook on the transformer: records the outputs of every call at the given steps (cond first, then
    uncond), optionally replacing them by `replace[step]`."""

    def __init__(self, transformer, timesteps: dict[int, float], replace: dict[int, list[torch.Tensor]] | None = None):
        self.timesteps, self.replace = timesteps, replace or {}
        self.outputs: dict[int, list[torch.Tensor]] = {step: [] for step in timesteps}
        self.handle = transformer.register_forward_hook(self._after, with_kwargs=True)

    def _after(self, module, args, kwargs, output):
        t = float(kwargs["timestep"].flatten()[0])
        step = next((k for k, value in self.timesteps.items() if abs(value - t) <= 1e-3), None)
        if step is None:
            return None
        calls = self.outputs[step]
        if step not in self.replace:
            calls.append(output[0].detach().clone())
            return None
        calls.append(self.replace[step][len(calls)])
        return (calls[-1], *output[1:])


REFERENCE_PATCH = tuple(reference.TRANSFORMER_CONFIG["patch_size"])


def computed_cells(clip, latent_shape: Sequence[int], margin_width: int) -> torch.Tensor:
    """Latent cells [1, 1, T', H', W'] of the tokens a PARTIAL step with the whole margin and no context computes."""
    tokens = pixel_mask_to_token_mask(torch.from_numpy(clip.mask), reference.VAE_STRIDES, REFERENCE_PATCH)
    classes = classify_tokens(tokens, margin_width)
    grid = classes.grid
    computed = (classes.generative | classes.margin).view(1, 1, *grid)
    cells = computed.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    assert tuple(cells.shape[2:]) == tuple(latent_shape[2:])
    return cells


def velocity_deviation(reference: torch.Tensor, other: torch.Tensor, clip) -> dict[str, float]:
    """mean |other - reference| / mean |reference| of one step's conditional velocity, per region."""
    out = {}
    for name, region in latent_regions(clip, reference.shape).items():
        region = region.expand_as(reference)
        out[name] = float((other - reference).abs()[region].mean() / reference.abs()[region].mean())
    return out


def run(session: LoadedWorkload, clip, timesteps: dict[int, float], plan=None, policy=None, replace=None):
    """(final latents, outputs at `timesteps`, decision letter of the plan's one cached step, FLOPs of that step / a
    full step); uncached without a plan."""
    attached = contextlib.nullcontext() if plan is None else session.attach(clip, policy, strict=False, plan=plan)
    with attached as handle:
        tap = StepTap(session.transformer, timesteps, replace)
        try:
            latents = session.generate(clip, decode=False).latents
        finally:
            tap.handle.remove()
    if handle is None:
        return latents, tap.outputs, "F", 1.0
    stats = handle.stats()
    step = next(i for i, letter in enumerate(plan) if letter != "F")
    steps = len(plan)
    return latents, tap.outputs, stats["decisions"][step], steps * stats["flops_fraction"] - (steps - 1)


def measure_clip(
    session: LoadedWorkload, clip, positions: Sequence[int], variants: Sequence[str]
) -> dict[int, dict[str, Any]]:
    timesteps = [float(t) for t in session.timesteps()]
    steps = session.workload.steps
    rows: dict[int, dict[str, Any]] = {}
    reference, ref_outputs, _, _ = run(session, clip, {p: timesteps[p] for p in positions})
    for position in positions:
        tap = {position: timesteps[position]}
        ref_out = ref_outputs[position]
        row: dict[str, Any] = {}
        cached_out = None
        for name in variants:
            letter, changes = VARIANTS[name]
            plan = "".join(letter if i == position else "F" for i in range(steps))
            latents, outputs, decision, cost = run(session, clip, tap, plan, BASE.replace(**changes))
            outputs = outputs[position]
            row[name] = {
                "final": deviation(reference, latents, clip),
                "step_velocity": velocity_deviation(ref_out[0], outputs[0], clip),
                "decision": decision,
                "step_flops": cost,
            }
            if name == SPLICED:
                cached_out = outputs
        rows[position] = row
        if cached_out is None:
            continue
        cells = computed_cells(clip, ref_out[0].shape, BASE.tokens.margin_width)
        for name, where in (("stale_kv_only", cells), ("stale_residual_only", ~cells)):
            spliced = [torch.where(where, c, r) for c, r in zip(cached_out, ref_out, strict=True)]
            latents, outputs, _, _ = run(session, clip, tap, replace={position: spliced})
            row[name] = {
                "final": deviation(reference, latents, clip),
                "step_velocity": velocity_deviation(ref_out[0], outputs[position][0], clip),
            }
    return rows


def merged(previous: dict[str, Any], fresh: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[int, dict]]:
    """Per-clip rows of an earlier results file with the freshly measured variants put in (or replaced)."""
    out = {name: {int(p): dict(row) for p, row in rows.items()} for name, rows in previous["clips"].items()}
    for name, rows in fresh.items():
        for position, row in rows.items():
            out.setdefault(name, {}).setdefault(position, {}).update(row)
    return out


def summarise(per_clip: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Median (and range) over clips of every number, by position and variant."""
    first = next(iter(per_clip.values()))
    out: dict[str, Any] = {}
    for position, variants in first.items():
        out[str(position)] = {}
        for name, fields in variants.items():
            entry: dict[str, Any] = {}
            for field, value in fields.items():
                if isinstance(value, dict):
                    entry[field] = {}
                    for region in value:
                        values = [clip[position][name][field][region] for clip in per_clip.values()]
                        entry[field][region] = {
                            "median": statistics.median(values),
                            "min": min(values),
                            "max": max(values),
                        }
                elif field == "decision":
                    entry[field] = "".join(sorted({clip[position][name][field] for clip in per_clip.values()}))
                else:
                    entry[field] = statistics.median(clip[position][name][field] for clip in per_clip.values())
            out[str(position)][name] = entry
    return out


def table(summary: dict[str, Any]) -> str:
    """README table: median final in-mask deviation (and beyond-reach) by step position, as a share of REUSE's."""
    names = ["reuse", SPLICED, "stale_kv_only", "stale_residual_only", "kv_refresh", "margin_half_skipped"]
    names += ["margin_skipped"]
    names += ["output_fill", "stride_0.1", "stride_0.3", "attention_0.3", "kmeans_0.3", "everything_computed"]
    names += ["kv_refresh_forecast", "reuse_forecast"]
    positions = list(summary)
    lines = [
        "| variant | " + " | ".join(f"step {p}: inside (share of reuse) / outside" for p in positions) + " |",
        "|---|" + "---|" * len(positions),
    ]
    for name in (n for n in names if n in summary[positions[0]]):
        cells = []
        for p in positions:
            entry = summary[p][name]["final"]
            reuse = summary[p]["reuse"]["final"]["inside"]["median"]
            inside, outside = entry["inside"]["median"], entry["outside"]["median"]
            cells.append(f"{inside:.2e} ({inside / reuse:.0%}) / {outside:.1e}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", default="3,10,17", help="step indices of the single PARTIAL/REUSE step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/partial_error.json"))
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated variants to measure, merged into the existing --out file (default: every variant)",
    )
    args = parser.parse_args(argv)
    positions = [int(p) for p in args.positions.split(",")]
    sources = tuple(ClipSource(f"{kind}-{seed}", kind=kind, seed=seed) for kind, seed in HELD_OUT)
    workload = Workload(height=args.size, width=args.size, num_frames=17, steps=args.steps, clips=sources)
    variants = list(VARIANTS) if args.variants is None else args.variants.split(",")
    previous = None
    if args.variants is not None:
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        if not args.out.is_file():
            parser.error(f"--variants merges into an existing results file, and {args.out} does not exist")
        previous = harness.read_result(args.out)
        if previous["workload"] != workload.to_dict() or any(str(p) not in previous["summary"] for p in positions):
            parser.error(f"{args.out} holds another workload or other positions: run without --variants")
        if "reuse" not in variants and any(
            "reuse" not in row for rows in previous["clips"].values() for row in rows.values()
        ):
            parser.error(f"{args.out} has no reuse rows to compare with: add reuse to --variants")
    session = LoadedWorkload(workload)
    per_clip = {clip.name: measure_clip(session, clip, positions, variants) for clip in session.clips}
    if previous is not None:
        per_clip = merged(previous, per_clip)
    summary = summarise(per_clip)
    harness.write_result(
        args.out,
        {
            "what": "deviation from the uncached run of one PARTIAL/REUSE step (tiny reference model, held-out clips)",
            "workload": workload.to_dict(),
            "base_policy": BASE.to_dict()["tokens"],
            "variants": {name: {"step": letter, **changes} for name, (letter, changes) in VARIANTS.items()},
            "summary": summary,
            "clips": {name: {str(p): row for p, row in rows.items()} for name, rows in per_clip.items()},
        },
        script="partial_error.py",
        argv=argv,
    )
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
