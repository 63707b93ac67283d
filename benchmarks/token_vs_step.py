"""Where token-level caching pays: the best plan with PARTIAL steps against the best REUSE-only plan at equal FLOPs.

    python benchmarks/token_vs_step.py --quick                     # one small point, a few minutes on CPU
    python benchmarks/token_vs_step.py --kinds small_box,box --sizes 128,256,384 --steps 20
    python benchmarks/token_vs_step.py --variants tokens.refresh_skipped_kv=true   # one more token-level variant
    python benchmarks/token_vs_step.py --render benchmarks/results/token_vs_step.json   # only re-write the table
    python benchmarks/token_vs_step.py --contract paste --points 8 --out benchmarks/results/token_vs_step_paste.json
    python benchmarks/token_vs_step.py --no-plain-step --step-variants fc:cache.forecast=linear \
        --variants run4:tokens.refresh_skipped_kv=true,cache.forecast=linear,step_plan.max_partial_run=4

At each point (mask kind, size, steps) and held-out seed: the uncached run, then cached runs of explicit plans that
cache the steps hetcache's accumulated-change rule caches at a ladder of thresholds (warm-up steps and the last step
FULL). Families of configurations:

- step: those steps REUSE (timestep-level caching only; `--step-variants` adds more, e.g. forecasting);
- token:<variant>: those steps PARTIAL, every block partial, margin defaults, the variant's context ratio and
  selection (`--variants` adds more as policy field overrides; a field this hetcache lacks skips the variant);
- mixed:<variant>: REUSE before `--split` of the run, PARTIAL after.

A variant setting `step_plan.max_partial_run` (bounded staleness) gets its FULL steps where the step rule's bound
puts them (`hetcache.plan.bound_partial_runs`): an explicit plan bypasses the rule, so the benchmark applies it.
`--no-plain-step` leaves out the step-only configuration without overrides (e.g. when a forecasting step variant
dominates it).

Token-level plans are token:* and mixed:*. For each configuration the plans whose FLOPs fraction (the engine's own
accounting, not wall-clock) brackets each target are run, and whole-frame and in-mask PSNR against the uncached run
of the same seed (`hetcache.metrics`) are interpolated linearly in FLOPs at the target. The best configuration of
each family (by the mean over seeds, per metric) is compared: token − step in dB, mean and range over seeds.

With `--points N` each configuration also runs N plans spread over its whole ladder (the accumulated-change sets
and, for few steps, evenly spread step sets), and each family is read along its envelope: the upper Pareto front of
all its runs (every configuration of the family) in FLOPs against quality, interpolated linearly at equal FLOPs — a
coarse ladder would flatter whichever side has the denser points. `--contract` runs every run (the uncached ones
too) under an editing contract (hetcache.contracts); under paste, feather and blend the compared metrics are in the
mask and across its edge (`psnr_mask`, `psnr_seam`), since whole-frame PSNR after paste-back is a function of the
mask's area (still recorded). Numbers come from the tiny reference model. Results are checkpointed after every run:
a rerun resumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch
from benchmark_base import BENCHMARK_BASE

from hetcache.atomic import write_json, write_text
from hetcache.contracts import contract_note, contract_type, parse_contract
from hetcache.engine.registry import model_token_mask
from hetcache.errors import InputError, PolicyError
from hetcache.metrics import clip_quality
from hetcache.plan import bound_partial_runs, plan_from_changes, step_changes
from hetcache.policy import SECTIONS, Policy, StepPlanSpec, TokenSpec, WorkloadSpec, load_policy
from hetcache.stationarity import HELD_OUT
from hetcache.steps import FULL, PARTIAL, REUSE
from hetcache.tokens import classify_tokens
from hetcache.workloads import CLIP_KINDS, ClipSource, Workload
from hetcache.workloads.execute import LoadedWorkload

SCHEMA = "hetcache.bench.token_vs_step/v1"
SEEDS = tuple(seed for _, seed in HELD_OUT)  # seeds no shipped policy was tuned on and no training run saw
TOKEN_VARIANTS: dict[str, dict[str, Any]] = {  # name: policy field overrides on top of the token-level base
    "ctx0": {"context_ratio": 0.0, "selection": "stride"},
    "stride0.1": {"context_ratio": 0.1, "selection": "stride"},
    "stride0.3": {"context_ratio": 0.3, "selection": "stride"},
    "attention0.1": {"context_ratio": 0.1, "selection": "attention"},
}
MARGIN_FIELDS = ("mask_threshold", "margin_width", "margin_frames", "margin_ratio", "skip_fill")
QUALITY_KEYS = ("psnr", "psnr_mask", "psnr_margin", "psnr_background", "psnr_seam", "ssim", "ssim_mask", "ssim_seam")
QUALITY_KEYS += ("latent_rel_l2",)
METRICS = ("psnr", "psnr_mask")  # compared at equal FLOPs under contract none (report_metrics: the contract's)
CROSSOVER_GRID = tuple(round(0.2 + 0.05 * i, 2) for i in range(16))  # FLOPs fractions the envelopes are read at
CONFIG_GRID = CROSSOVER_GRID[2::2]  # the fractions each configuration's own envelope is shown at (0.3 … 0.9)
WIN_DB = 1.0  # the bar: token-level ahead by this much, whole frame and in the mask
QUICK = dict(kinds="small_box", sizes="128", steps="8", seeds="1", targets="0.5", token_variants="ctx0")
DEFAULTS = dict(
    kinds="small_box,small_moving,box",
    sizes="128,256,384",
    steps="8,20,50",
    seeds="2",
    targets="0.7,0.5",
    token_variants=",".join(TOKEN_VARIANTS),
)


# ---------------------------------------------------------------------------------------------------------
# configurations and plans


@dataclass(frozen=True)
class Config:
    """One family configuration: which letter its cached steps get and the policy overrides it runs with."""

    name: str
    family: str  # "step", "token" or "mixed"
    overrides: dict[str, Any]

    def plan(self, cached: Sequence[int], steps: int, split: float) -> str:
        """The explicit plan caching `cached` step indices: R (step), P (token), R before the split, P after (mixed);
        with `max_partial_run` among the overrides, FULL where the step rule's staleness bound puts it (an explicit
        plan bypasses the rule, so the benchmark applies the rule's own bound)."""
        letters = [FULL] * steps
        for i in cached:
            late = i >= split * (steps - 1)
            letters[i] = {"step": REUSE, "token": PARTIAL}.get(self.family, PARTIAL if late else REUSE)
        return bound_partial_runs("".join(letters), self.overrides.get("max_partial_run"))


def parse_overrides(text: str) -> tuple[str, dict[str, Any], str | None]:
    """`[NAME:]section.field=value,...` → (name, {field: value}, why it is skipped or None); values are JSON."""
    name, _, body = text.rpartition(":") if ":" in text.split("=")[0] else ("", "", text)
    known = {s.name: {f.name for f in fields(s.cls)} for s in SECTIONS}
    overrides: dict[str, Any] = {}
    for item in (part.strip() for part in body.split(",") if part.strip()):
        key, eq, raw = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or not dot or section not in known:
            raise InputError(
                f"variant {text!r}: {item!r} is not section.field=value over {', '.join(known)}.",
                'write e.g. tokens.context_ratio=0.2 (values in JSON: true, 0.5, "stride").',
            )
        if field not in known[section]:
            return name or body, {}, f"this hetcache's policy has no field {section}.{field}"
        try:
            overrides[field] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field] = raw
    if not overrides:
        raise InputError(f"variant {text!r} changes nothing.", "give at least one section.field=value.")
    return name or body, overrides, None


def configs_from_args(args: argparse.Namespace, log: Callable[[str], None]) -> list[Config]:
    """Every configuration the run compares (built-in and extra variants; extras naming absent fields skipped)."""
    extra = {}  # --variants by name: usable in --mixed as well
    for text in args.variants:
        name, overrides, skipped = parse_overrides(text)
        if skipped:
            log(f"skipping variant {name!r}: {skipped}")
        else:
            extra[name] = {**TOKEN_VARIANTS["stride0.1"], **overrides}
    known = {**TOKEN_VARIANTS, **extra}
    unknown = [v for v in args.token_variants if v not in TOKEN_VARIANTS] + [v for v in args.mixed if v not in known]
    if unknown:
        raise InputError(
            f"--token-variants/--mixed name unknown variants {', '.join(unknown)}.",
            f"use {', '.join(TOKEN_VARIANTS)} or a named --variants entry.",
        )
    configs = [Config("step", "step", {})] if args.plain_step else []
    for text in args.step_variants:
        name, overrides, skipped = parse_overrides(text)
        if skipped:
            log(f"skipping step variant {name!r}: {skipped}")
        else:
            configs.append(Config(f"step:{name}", "step", overrides))
    if not configs:
        raise InputError("--no-plain-step leaves no step-only configuration.", "add a --step-variants entry.")
    configs += [Config(f"token:{v}", "token", TOKEN_VARIANTS[v]) for v in args.token_variants]
    configs += [Config(f"token:{name}", "token", overrides) for name, overrides in extra.items()]
    configs += [Config(f"mixed:{v}", "mixed", known[v]) for v in args.mixed]
    return configs


def token_base(base: Policy, workload: WorkloadSpec | None, warmup: int) -> Policy:
    """The base policy with margin defaults, every block partial and the benchmark's workload (plans come later)."""
    defaults = TokenSpec()
    return base.replace(
        name="token-vs-step",
        workload=workload,
        rule="accumulated_change",
        plan=None,
        warmup_steps=warmup,
        partial_blocks=None,
        partial_vace_blocks=None,
        **{name: getattr(defaults, name) for name in MARGIN_FIELDS},
    )


def policy_for(base: Policy, config: Config, plan: str) -> Policy:
    """The policy of one run: the explicit plan and the configuration's overrides, validated by hetcache.policy."""
    return base.replace(name=f"token-vs-step-{config.name}", rule="explicit", plan=plan, **config.overrides)


def cached_step_sets(session: LoadedWorkload, warmup: int) -> list[tuple[int, ...]]:
    """The step sets the accumulated-change rule (REUSE-only, unrescaled change) caches over a threshold ladder,
    fewest first; the largest caches every step between the warm-up and the last step."""
    steps = session.workload.steps
    changes = step_changes(session.transformer, session.timesteps())
    found: dict[tuple[int, ...], None] = {}
    for threshold in np.geomspace(1e-4, max(1e-3, 4 * sum(changes)), 400):
        spec = StepPlanSpec(float(threshold), float(threshold), warmup_steps=warmup, final_full_steps=1)
        plan = plan_from_changes(changes, spec)
        cached = tuple(i for i, letter in enumerate(plan) if letter == REUSE)
        if cached:
            found.setdefault(cached, None)
    found.setdefault(tuple(range(warmup, steps - 1)), None)
    return sorted(found, key=len)


def spread_step_sets(steps: int, warmup: int) -> list[tuple[int, ...]]:
    """For every count k of cacheable steps, k steps spread evenly between the warm-up and the last step: a ladder
    of one plan per k, dense where the accumulated-change ladder is sparse (few steps)."""
    cacheable = list(range(warmup, steps - 1))
    sets = []
    for k in range(1, len(cacheable) + 1):
        picks = sorted({cacheable[round(i * (len(cacheable) - 1) / max(1, k - 1))] for i in range(k)})
        if len(picks) == k:
            sets.append(tuple(picks))
    return sets


def spanning(candidates: Sequence[str], points: int) -> list[str]:
    """`points` plans spread evenly over a ladder (fewest cached steps first), both ends included."""
    if len(candidates) <= points:
        return list(candidates)
    return [candidates[round(i * (len(candidates) - 1) / (points - 1))] for i in range(points)]


# ---------------------------------------------------------------------------------------------------------
# runs


def cost_of(plan: str, reuse: float, partial: float) -> float:
    """Predicted FLOPs fraction of a plan from the per-letter cost of a step (FULL = 1); used to pick plans only."""
    return (plan.count(FULL) + reuse * plan.count(REUSE) + partial * plan.count(PARTIAL)) / len(plan)


class ClipRunner:
    """Runs one clip of a point: the uncached run once, then cached runs, each recorded with engine FLOPs and
    quality against the uncached output."""

    def __init__(self, session: LoadedWorkload, clip, base: Policy, split: float):
        self.session, self.clip, self.base, self.split = session, clip, base, split
        self.reference = None
        self.uncached_seconds: float | None = None

    def uncached(self):
        """The uncached run of the clip (once per point and seed)."""
        if self.reference is None:
            started = time.process_time()
            self.reference = self.session.generate(self.clip)
            self.uncached_seconds = time.process_time() - started
        return self.reference

    def partial_guess(self, config: Config) -> float:
        """The share of tokens a PARTIAL step of `config` computes (from the token classes): a first cost guess."""
        tokens = policy_for(self.base, config, FULL * self.session.workload.steps).tokens
        mask = model_token_mask(self.session.transformer, torch.from_numpy(self.clip.mask))
        counts = classify_tokens(mask, tokens.margin_width, tokens.margin_frames).counts()
        g, m, c = (counts[name][0] for name in ("generative", "margin", "context"))
        return (g + tokens.margin_ratio * m + tokens.context_ratio * c) / (g + m + c)

    def cached(self, config: Config, plan: str) -> dict[str, Any]:
        policy = policy_for(self.base, config, plan)
        reference = self.uncached()
        started = time.process_time()
        generation, stats = self.session.generate_cached(self.clip, policy, strict=True)
        quality = clip_quality(
            reference.frames, generation.frames, self.clip.mask, reference.latents, generation.latents
        )
        return {
            "config": config.name,
            "family": config.family,
            "plan": plan,
            "decisions": stats["decisions"],
            "cached_steps": sum(letter != FULL for letter in plan),
            "flops": stats["flops"],
            "flops_uncached": stats["flops_uncached"],
            "flops_fraction": stats["flops_fraction"],
            "partial_active_fraction": next(
                (a for a, d in zip(stats["active_fraction"], stats["decisions"], strict=True) if d == PARTIAL), None
            ),
            "token_classes": stats["token_classes"],
            "cpu_seconds": time.process_time() - started,
            **{key: quality[key] for key in QUALITY_KEYS},
        }


def letter_costs(runs: list[dict[str, Any]], config: Config, partial: float) -> tuple[float, float]:
    """(REUSE, PARTIAL) step cost as a share of a FULL step, solved from measured runs (`partial` and a REUSE guess
    before any)."""
    reuse = 0.02
    for run in runs:
        plan, total = run["plan"], run["flops_fraction"] * len(run["plan"])
        if PARTIAL not in plan and plan.count(REUSE):
            reuse = max(0.0, (total - plan.count(FULL)) / plan.count(REUSE))
    mine = [r for r in runs if PARTIAL in r["plan"] and r["config"] == config.name]
    for run in mine:
        plan, total = run["plan"], run["flops_fraction"] * len(run["plan"])
        partial = (total - plan.count(FULL) - reuse * plan.count(REUSE)) / plan.count(PARTIAL)
    return reuse, partial


def bracket(points: list[tuple[float, dict]], target: float) -> tuple[dict, dict] | None:
    """The measured runs adjacent in FLOPs around `target` (first at or above it, second below), or None."""
    ordered = sorted(points, key=lambda p: -p[0])
    for (high, a), (low, b) in itertools.pairwise(ordered):
        if high >= target > low or math.isclose(high, target):
            return a, b
    return None


def runs_for_config(
    runner: ClipRunner,
    config: Config,
    candidates: list[str],
    targets: Sequence[float],
    done: list[dict[str, Any]],
    record: Callable[[dict[str, Any]], None],
) -> None:
    """Run the candidate plans of `config` (fewest cached steps first) whose FLOPs bracket each target: predict with
    per-letter costs fitted to the runs so far, run the predicted neighbours, repeat until the measured runs are
    adjacent around the target or show it out of reach."""
    for target in targets:
        for _ in range(6):
            measured = {r["plan"]: r["flops_fraction"] for r in done if r["config"] == config.name}
            reuse, partial = letter_costs(done, config, runner.partial_guess(config))
            cost = [measured.get(plan, cost_of(plan, reuse, partial)) for plan in candidates]
            index = max((i for i, c in enumerate(cost) if c >= target), default=None)
            if index is None:  # even the fewest cached steps cost less than the target
                wanted = [candidates[0]]
            elif index == len(candidates) - 1:  # even the most cached steps cost more: out of reach
                wanted = [candidates[-1]]
            else:
                wanted = [candidates[index], candidates[index + 1]]
            todo = [plan for plan in wanted if plan not in measured]
            if not todo:
                break
            for plan in todo:
                run = runner.cached(config, plan)
                done.append(run)
                record(run)


# ---------------------------------------------------------------------------------------------------------
# summaries


def interpolate(runs: list[dict[str, Any]], target: float, metric: str) -> float | None:
    """`metric` at FLOPs fraction `target`, linear between the adjacent measured runs around it (None if none)."""
    pair = bracket([(r["flops_fraction"], r) for r in runs], target)
    if pair is None:
        return None
    a, b = pair
    fa, fb = a["flops_fraction"], b["flops_fraction"]
    if math.isclose(fa, target):
        return a[metric]
    return b[metric] + (a[metric] - b[metric]) * (target - fb) / (fa - fb)


def family_of(config: str) -> str:
    """'step' for step-only configurations, 'token' for every configuration with PARTIAL steps (token:*, mixed:*)."""
    return "step" if config.split(":")[0] == "step" else "token"


def envelope(runs: list[dict[str, Any]], metric: str) -> list[tuple[float, float]]:
    """The upper Pareto front of runs in (FLOPs fraction, `metric`): no other run is cheaper and at least as good."""
    points = sorted(
        ((r["flops_fraction"], r[metric]) for r in runs if isinstance(r.get(metric), (int, float))),
        key=lambda p: (p[0], -p[1]),
    )
    front: list[tuple[float, float]] = []
    for flops, value in points:
        if not front or value > front[-1][1]:
            front.append((flops, value))
    return front


def envelope_at(front: list[tuple[float, float]], target: float) -> float | None:
    """The front's value at FLOPs fraction `target`, linear between its points; None outside the measured range
    (below it: out of reach; above it: not measured — holding the last value there would flatter the other side)."""
    if not front or not front[0][0] - 1e-9 <= target <= front[-1][0] + 1e-9:
        return None
    if len(front) == 1:
        return front[0][1]
    for (fa, va), (fb, vb) in itertools.pairwise(front):
        if fa <= target <= fb:
            return va if math.isclose(fa, fb) else va + (vb - va) * (target - fa) / (fb - fa)
    return None


def envelope_summary(seeds: list[dict[str, Any]], targets: Sequence[float], metrics: Sequence[str]) -> dict:
    """Per FLOPs fraction (the targets and CROSSOVER_GRID) and metric: each family's envelope value per seed and
    mean, and token − step (mean, min, max over seeds); with the number of runs and front points per family."""
    fronts = [
        {
            m: {f: envelope([r for r in s["runs"] if family_of(r["config"]) == f], m) for f in ("step", "token")}
            for m in metrics
        }
        for s in seeds
    ]
    counts = {
        f: min((sum(family_of(r["config"]) == f for r in s["runs"]) for s in seeds), default=0)
        for f in ("step", "token")
    }
    spans = {f: [front[metrics[0]][f] for front in fronts] for f in ("step", "token")}
    measured = {  # the FLOPs range every seed's front covers, per family
        f: [max(fr[0][0] for fr in spans[f]), min(fr[-1][0] for fr in spans[f])] if all(spans[f]) else None
        for f in ("step", "token")
    }
    at: dict[str, Any] = {}
    for flops in sorted(set(targets) | set(CROSSOVER_GRID), reverse=True):
        entry: dict[str, Any] = {}
        for metric in metrics:
            values = {f: [envelope_at(front[metric][f], flops) for front in fronts] for f in ("step", "token")}
            cell: dict[str, Any] = {f: statistics.fmean(v) if v and None not in v else None for f, v in values.items()}
            if cell["step"] is not None and cell["token"] is not None:
                diffs = [t - s for t, s in zip(values["token"], values["step"], strict=True)]
                cell["token_minus_step"] = {"mean": statistics.fmean(diffs), "min": min(diffs), "max": max(diffs)}
            else:
                cell["token_minus_step"] = None
            entry[metric] = cell
        at[f"{flops:g}"] = entry
    return {"runs_per_family": counts, "flops_range": measured, "at": at, "configs": config_envelopes(seeds, metrics)}


def config_envelopes(seeds: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per configuration run on every seed: its own envelope's value at each CROSSOVER_GRID fraction, mean over seeds
    per metric (None where some seed's front does not reach it) — which variant of a family carries its envelope."""
    names = set.intersection(*({r["config"] for r in s["runs"]} for s in seeds))
    out: dict[str, dict[str, dict]] = {}
    for name in sorted(names):
        fronts = {m: [envelope([r for r in s["runs"] if r["config"] == name], m) for s in seeds] for m in metrics}
        out[name] = {}
        for flops in CROSSOVER_GRID:
            values = {m: [envelope_at(front, flops) for front in fronts[m]] for m in metrics}
            out[name][f"{flops:g}"] = {m: None if None in v else statistics.fmean(v) for m, v in values.items()}
    return out


def summarise_point(point: dict[str, Any], targets: Sequence[float], metrics: Sequence[str] = METRICS) -> dict:
    """Per target: each configuration's interpolated quality per seed and mean (configurations run on every
    complete seed), the best step-only and best token-level configuration per metric, and token − step (mean, min,
    max over seeds)."""
    seeds = [s for s in point["seeds"].values() if s.get("complete")]
    ran = [{r["config"] for r in s["runs"]} for s in seeds]
    names = sorted(set.intersection(*ran)) if ran else []  # configurations run on every seed only
    out: dict[str, Any] = {}
    for target in targets:
        per_config: dict[str, dict[str, Any]] = {}
        for name in names:
            entry: dict[str, Any] = {}
            for metric in metrics:
                values = [interpolate([r for r in s["runs"] if r["config"] == name], target, metric) for s in seeds]
                entry[metric] = {
                    "per_seed": values,
                    "mean": statistics.fmean(values) if values and None not in values else None,
                }
            per_config[name] = entry
        best: dict[str, Any] = {}
        diff: dict[str, Any] = {}
        for metric in metrics:
            for side in ("step", "token"):
                reached = [
                    (per_config[n][metric]["mean"], n)
                    for n in names
                    if per_config[n][metric]["mean"] is not None and (n.split(":")[0] == "step") == (side == "step")
                ]
                best.setdefault(side, {})[metric] = (
                    {"config": max(reached)[1], "mean": max(reached)[0]} if reached else None
                )
            if best["step"][metric] and best["token"][metric]:
                token = per_config[best["token"][metric]["config"]][metric]["per_seed"]
                step = per_config[best["step"][metric]["config"]][metric]["per_seed"]
                values = [t - s for t, s in zip(token, step, strict=True)]
                diff[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
            else:
                diff[metric] = None
        out[f"{target:g}"] = {"configs": per_config, "best": best, "token_minus_step": diff}
    if seeds:
        out["envelope"] = envelope_summary(seeds, targets, metrics)
    return out


def report_metrics(report: dict[str, Any]) -> tuple[str, str]:
    """The two metrics a report compares: its contract's headline (whole / in-mask for the raw output)."""
    return parse_contract(report["settings"].get("contract")).headline_metrics


def ordered(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The points by step count, size and mask area (the order the tables read in)."""
    return sorted(report["points"].values(), key=lambda p: (p["steps"], p["size"], p["mask_share"]))


LABELS = {"psnr": "whole", "psnr_mask": "in-mask", "psnr_seam": "seam"}


def _pair(best: dict[str, Any], metrics: Sequence[str]) -> str:
    """'a / b' mean PSNR of a family's best configurations in the two compared metrics, or why there is none."""
    values = [best[m] for m in metrics]
    if None in values:
        return "out of reach"
    return " / ".join(f"{v['mean']:.1f}" for v in values)


def _delta(diff: dict[str, float] | None) -> str:
    """'mean [min, max]' of a token − step difference over seeds."""
    return "–" if diff is None else f"{diff['mean']:+.2f} [{diff['min']:+.2f}, {diff['max']:+.2f}]"


def _targets_of(point: dict[str, Any]) -> dict[str, Any]:
    """A point's per-target summaries (without the envelope entry)."""
    return {k: v for k, v in point.get("summary", {}).items() if k != "envelope"}


def markdown(report: dict[str, Any]) -> str:
    """The crossover table: per target, each point's best step-only and token-level quality and their difference;
    with envelopes (--points), each family's envelope at equal FLOPs."""
    metrics = report_metrics(report)
    contract = report["settings"].get("contract", "none")
    names = " / ".join(LABELS[m] for m in metrics)
    seeds = sorted({seed for point in report["points"].values() for seed in point["seeds"]})
    note = contract_note(contract)
    lines = [
        "Token-level (PARTIAL steps) vs step-only (REUSE) caching at equal FLOPs, tiny reference model, held-out "
        f"seeds {', '.join(seeds)}, editing contract `{contract}` (every run, uncached ones included); {names} PSNR "
        "(dB) against the uncached run, interpolated at the FLOPs fraction; the best configuration of each family by "
        f"its mean over seeds (per metric: {names} when they differ); token − step: mean [min, max] over seeds. 'out "
        f"of reach': no plan of the family gets that cheap. 'wins': token-level ahead by ≥ {WIN_DB:g} dB in both."
        + (f" {note}" if note else ""),
        "",
        *([report["reading"], ""] if report.get("reading") else []),
        "Commands:",
        "",
        *(f"    {command}" for command in report.get("commands", [])),
        "",
    ]
    targets = sorted({t for p in report["points"].values() for t in p.get("targets", report["targets"])}, reverse=True)
    for target in targets:
        key = f"{target:g}"
        lines += [
            f"At {key} of the uncached FLOPs ({1 / target:.2g}× fewer), contract `{contract}`:",
            "",
            "| mask | area: pixels / tokens | size | steps | seeds | step-only | token-level (best config) | "
            + " | ".join(f"token − step {LABELS[m]}" for m in metrics)
            + " | wins |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for point in ordered(report):
            summary = _targets_of(point).get(key)
            seeds = sum(bool(entry.get("complete")) for entry in point["seeds"].values())
            if summary is None or not seeds:
                continue
            best, diff = summary["best"], summary["token_minus_step"]
            configs = dict.fromkeys(best["token"][m]["config"] for m in metrics if best["token"][m])
            lines.append(
                f"| {point['kind']} | {_area(point)} | {point['size']}² | {point['steps']} | {seeds} | "
                f"{_pair(best['step'], metrics)} | {_pair(best['token'], metrics)} ({' / '.join(configs) or '–'}) | "
                + " | ".join(_delta(diff[m]) for m in metrics)
                + f" | {_verdict([diff[m] for m in metrics])} |"
            )
        lines.append("")
    tables = envelope_tables(report, metrics) + config_envelope_tables(report, metrics)
    return "\n".join(lines + tables + config_tables(report, targets, metrics))


def _area(point: dict[str, Any]) -> str:
    return f"{100 * point['mask_share']:.1f} % / {100 * point.get('token_share', math.nan):.0f} %"


def _verdict(diffs: list[dict[str, float] | None]) -> str:
    if all(d is not None and d["mean"] >= WIN_DB for d in diffs):
        return "**yes**"
    return "ahead < 1 dB" if all(d is not None and d["mean"] > 0 for d in diffs) else "no"


def envelope_tables(report: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """Per point with envelopes: each family's envelope along the FLOPs grid and where token-level is ahead."""
    points = [p for p in ordered(report) if "envelope" in p.get("summary", {})]
    if not points or not report["settings"].get("points"):
        return []
    names = " / ".join(LABELS[m] for m in metrics)
    lines = [
        f"Along each family's envelope (the upper Pareto front of all its runs, {names} PSNR, mean over seeds; "
        "token − step of the two envelopes at equal FLOPs; runs: the fewest per family on any seed):",
        "",
        "| mask | size | steps | runs step / token | FLOPs | step-only | token-level | "
        + " | ".join(f"token − step {LABELS[m]}" for m in metrics)
        + " | wins |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point in points:
        env = point["summary"]["envelope"]
        runs = env["runs_per_family"]
        for flops, entry in env["at"].items():
            cells = [entry[m] for m in metrics]
            ranges = [r for r in env["flops_range"].values() if r]
            if not ranges or float(flops) > max(r[1] for r in ranges):
                continue  # above what either family measured: nothing to compare

            def pair(family: str, cells=cells, flops=float(flops), env=env) -> str:
                values = [c[family] for c in cells]
                if None not in values:
                    return " / ".join(f"{v:.1f}" for v in values)
                span = env["flops_range"][family]
                return "out of reach" if span is None or flops < span[0] else "not measured"

            diffs = [c["token_minus_step"] for c in cells]
            lines.append(
                f"| {point['kind']} | {point['size']}² | {point['steps']} | {runs['step']} / {runs['token']} | "
                f"{flops} | {pair('step')} | {pair('token')} | "
                + " | ".join(_delta(d) for d in diffs)
                + f" | {_verdict(diffs)} |"
            )
    return [*lines, ""]


def config_envelope_tables(report: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """Per point with envelopes: every configuration's own envelope at CONFIG_GRID ('–': not reached by it)."""
    points = [p for p in ordered(report) if "configs" in p.get("summary", {}).get("envelope", {})]
    if not points or not report["settings"].get("points"):
        return []
    names = " / ".join(LABELS[m] for m in metrics)
    lines = [
        f"Each configuration's own envelope ({names} PSNR, mean over seeds; '–': its plans do not reach that FLOPs "
        "fraction on every seed):",
        "",
        "| mask | size | steps | configuration | " + " | ".join(f"{f:g}" for f in CONFIG_GRID) + " |",
        "|---|---|---|---|" + "---|" * len(CONFIG_GRID),
    ]
    for point in points:
        configs = point["summary"]["envelope"]["configs"]
        for name in sorted(configs, key=lambda n: (family_of(n) != "step", n)):
            cells = [configs[name].get(f"{f:g}") for f in CONFIG_GRID]
            shown = [
                "–" if c is None or None in c.values() else " / ".join(f"{c[m]:.1f}" for m in metrics) for c in cells
            ]
            lines.append(
                f"| {point['kind']} | {point['size']}² | {point['steps']} | {name} | " + " | ".join(shown) + " |"
            )
    return [*lines, ""]


def config_tables(report: dict[str, Any], targets: Sequence[float], metrics: Sequence[str]) -> list[str]:
    """Per target, every configuration's mean quality in the two compared metrics at each point ('–': out of reach)."""
    summaries = [s for p in report["points"].values() for s in _targets_of(p).values()]
    names = sorted({n for s in summaries for n in s["configs"]}, key=lambda n: (n.split(":")[0] != "step", n))
    shown = " / ".join(LABELS[m] for m in metrics)
    lines = []
    for target in targets:
        key = f"{target:g}"
        rows = []
        for point in ordered(report):
            configs = _targets_of(point).get(key, {}).get("configs")
            if not configs or not any(entry.get("complete") for entry in point["seeds"].values()):
                continue
            cells = []
            for name in names:
                entry = configs.get(name)
                a, b = (entry[m]["mean"] if entry else None for m in metrics)
                cells.append("" if entry is None else "–" if None in (a, b) else f"{a:.1f} / {b:.1f}")
            rows.append(f"| {point['kind']} | {point['size']}² | {point['steps']} | " + " | ".join(cells) + " |")
        if rows:
            lines += [f"Every configuration at {key} of the FLOPs ({shown} PSNR, mean over seeds):", ""]
            lines += ["| mask | size | steps | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
            lines += [*rows, ""]
    return lines


# ---------------------------------------------------------------------------------------------------------
# the sweep


def point_key(kind: str, size: int, steps: int) -> str:
    return f"{kind}/{size}/{steps}"


def read_report(path: Path) -> dict[str, Any]:
    """A result file this benchmark wrote."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--out '{path}' cannot be read ({exc}).", "pass a file token_vs_step.py wrote.") from exc
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise InputError(f"--out '{path}' is not a token_vs_step result file.", "pass another --out.")
    return report


def load_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The results so far (resumable when the run-defining settings agree), or an empty report."""
    if not path.exists():
        return {"schema": SCHEMA, "settings": settings, "points": {}}
    report = read_report(path)
    old = report["settings"]
    clash = [k for k in settings if k != "configs" and old.get(k) != settings[k]]
    clash += [f"configs.{n}" for n, v in settings["configs"].items() if n in old["configs"] and old["configs"][n] != v]
    if clash:
        raise InputError(
            f"--out '{path}' holds results made with other settings ({', '.join(clash)}); they cannot be resumed.",
            "pass another --out, or --restart to discard them.",
        )
    report["settings"]["configs"] = {**old["configs"], **settings["configs"]}
    return report


def merge_reports(report: dict[str, Any], other: dict[str, Any], out: Path) -> None:
    """Add the points, seeds and runs of `other` (a sweep run separately, e.g. in parallel) to `report`."""
    mine, theirs = report["settings"], other["settings"]
    clash = [k for k in mine if k != "configs" and mine[k] != theirs.get(k)]
    clash += [f"configs.{n}" for n, v in theirs["configs"].items() if mine["configs"].get(n, v) != v]
    if clash:
        raise InputError(f"--merge: results made with other settings than '{out}' ({', '.join(clash)}).", "")
    mine["configs"] = {**theirs["configs"], **mine["configs"]}
    report["commands"] = [*report.get("commands", []), *other.get("commands", [])]
    for key, point in other["points"].items():
        target = report["points"].setdefault(key, {**point, "seeds": {}})
        target["targets"] = sorted(set(target.get("targets", [])) | set(point.get("targets", [])), reverse=True)
        for seed, entry in point["seeds"].items():
            have = target["seeds"].setdefault(seed, {**entry, "runs": []})
            known = {(r["config"], r["plan"]) for r in have["runs"]}
            have["runs"] += [r for r in entry["runs"] if (r["config"], r["plan"]) not in known]
            have["complete"] = bool(have.get("complete") or entry.get("complete"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="one small point (defaults below become QUICK's)")
    parser.add_argument("--kinds", help=f"clip kinds, comma-separated from {','.join(CLIP_KINDS)}")
    parser.add_argument("--sizes", help="square frame sides, multiples of 16 (default 128,256,384)")
    parser.add_argument("--steps", help="denoising step counts (default 8,20,50)")
    parser.add_argument("--seeds", help=f"held-out seeds: a count (the first of {SEEDS}) or a list")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--targets", help="FLOPs fractions to compare at (default 0.7,0.5)")
    parser.add_argument("--token-variants", help=f"built-in token-level variants from {','.join(TOKEN_VARIANTS)}")
    parser.add_argument("--mixed", default="stride0.1", help="variants also run as mixed plans ('' for none)")
    parser.add_argument("--split", type=float, default=0.5, help="mixed plans: PARTIAL from this share of the run")
    parser.add_argument(
        "--variants",
        action="append",
        default=[],
        help="extra token-level variant: [NAME:]section.field=value,... over stride0.1 (repeatable)",
    )
    parser.add_argument("--step-variants", action="append", default=[], help="extra step-only variant, same syntax")
    parser.add_argument(
        "--plain-step",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the step-only configuration without overrides (--no-plain-step: only the --step-variants ones, "
        "e.g. when the forecast dominates it)",
    )
    parser.add_argument("--base", default=str(BENCHMARK_BASE), help="shipped policy or file the plans start from")
    parser.add_argument("--warmup", type=int, help="FULL warm-up steps (default: the base policy's)")
    parser.add_argument("--weights", choices=("trained", "random"), default="trained")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/token_vs_step.json"))
    parser.add_argument("--restart", action="store_true", help="discard results in --out instead of resuming")
    parser.add_argument("--render", action="store_true", help="only re-write the summaries and table of --out")
    parser.add_argument(
        "--merge", action="append", type=Path, default=[], help="add the results of another --out file (repeatable)"
    )
    parser.add_argument(
        "--contract",
        type=contract_type,
        default="none",
        help="editing contract of every run (none, paste, feather:N, blend, blend+paste; default none)",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=0,
        help="also run this many plans spread over each configuration's ladder and compare the families along their "
        "envelopes (≥ 8 for a crossover table; 0: bracketing runs only)",
    )
    parser.add_argument(
        "--reading",
        type=Path,
        help="a markdown file: what the tables say, kept in --out and shown above them (with --render or a run)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    def items(flag: str, text: str, cast: Callable[[str], Any]) -> list[Any]:
        try:
            values = [cast(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--{flag} {text!r} is not a comma-separated list.", f"e.g. --{flag} 128,256.") from None
        return values

    args.kinds = items("kinds", args.kinds, str)
    args.sizes = items("sizes", args.sizes, int)
    args.steps = items("steps", args.steps, int)
    args.targets = items("targets", args.targets, float)
    args.token_variants = items("token-variants", args.token_variants, str)
    args.mixed = items("mixed", args.mixed, str)
    seeds = items("seeds", args.seeds, int)
    args.seeds = list(SEEDS[: seeds[0]]) if len(seeds) == 1 and seeds[0] <= len(SEEDS) else seeds
    bad = [k for k in args.kinds if k not in CLIP_KINDS]
    if bad:
        raise InputError(f"--kinds names unknown kinds {', '.join(bad)}.", f"use {', '.join(CLIP_KINDS)}.")
    if any(s < 16 or s % 16 for s in args.sizes):
        raise InputError(f"--sizes {args.sizes} holds a side that is no multiple of 16.", "e.g. --sizes 128,256.")
    if any(not 0 < t < 1 for t in args.targets):
        raise InputError(f"--targets {args.targets} must lie in (0, 1).", "e.g. --targets 0.7,0.5.")
    if not 0 <= args.split <= 1:
        raise InputError(f"--split {args.split} must lie in [0, 1].", "e.g. --split 0.5.")
    if args.points < 0 or args.points == 1:
        raise InputError(f"--points {args.points} spans no ladder.", "give 0 (off) or at least 2, e.g. --points 8.")
    if args.frames < 5 or (args.frames - 1) % 4:
        raise InputError(f"--frames {args.frames} is not 4k+1 ≥ 5.", "e.g. --frames 17.")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    configs = configs_from_args(args, log)
    base = load_policy(args.base)
    warmup = args.warmup if args.warmup is not None else base.step_plan.warmup_steps
    if any(steps < warmup + 2 for steps in args.steps):
        raise InputError(f"--steps {args.steps} leaves no step to cache after {warmup} warm-up steps.", "add steps.")
    settings = {
        "base": base.name,
        "weights": args.weights,
        "frames": args.frames,
        "warmup": warmup,
        "split": args.split,
        "configs": {c.name: {"family": c.family, **c.overrides} for c in configs},
    }
    if args.contract != "none":  # results of earlier versions (no contract: none) stay resumable
        settings["contract"] = args.contract
    if args.points:
        settings["points"] = args.points
    fresh = {"schema": SCHEMA, "settings": settings, "points": {}}
    report = read_report(args.out) if args.render else fresh if args.restart else load_checkpoint(args.out, settings)
    others = [read_report(path) for path in args.merge]  # all read before anything is written
    if args.reading is not None:
        try:
            report["reading"] = args.reading.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--reading '{args.reading}' cannot be read ({exc}).", "pass a markdown file.") from None
    for config in configs:  # every override must make a valid policy before anything runs
        try:
            for steps in args.steps:
                policy_for(token_base(base, None, warmup), config, FULL * steps)
        except PolicyError as exc:
            raise InputError(f"configuration {config.name}: {exc.what}", exc.fix) from None
    command = harness.command_line("token_vs_step.py", argv)
    report.setdefault("targets", args.targets)
    report.pop("tool", None)
    report["provenance"] = harness.provenance("token_vs_step.py", argv)
    if not (args.render or args.merge):  # the commands that ran something
        report["commands"] = [*report.get("commands", []), command]
    for other in others:
        merge_reports(report, other, args.out)

    def save() -> None:
        report["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")  # of this version of the file
        for point in report["points"].values():
            point["summary"] = summarise_point(point, point.get("targets", report["targets"]), report_metrics(report))
        write_json(args.out, report)
        write_text(args.out.with_suffix(".md"), markdown(report) + "\n")

    if args.render or args.merge:
        save()
        print(markdown(report))
        return 0
    pipe = None
    for steps in args.steps:
        for size in args.sizes:
            for kind in args.kinds:
                key = point_key(kind, size, steps)
                sources = tuple(ClipSource(f"{kind}-{seed}", kind=kind, seed=seed) for seed in args.seeds)
                workload = Workload(
                    weights=args.weights,
                    height=size,
                    width=size,
                    num_frames=args.frames,
                    steps=steps,
                    clips=sources,
                    contract=args.contract,
                )
                session = LoadedWorkload(workload, pipe=pipe)
                pipe = session.pipe
                point = report["points"].setdefault(key, {"kind": kind, "size": size, "steps": steps, "seeds": {}})
                point["targets"] = sorted(set(point.get("targets", [])) | set(args.targets), reverse=True)
                point["mask_share"] = statistics.fmean(float(c.mask.mean()) for c in session.clips)
                point["token_share"] = statistics.fmean(
                    float(model_token_mask(session.transformer, torch.from_numpy(c.mask)).float().mean())
                    for c in session.clips
                )
                candidates = cached_step_sets(session, warmup)
                if args.points:
                    extra = [c for c in spread_step_sets(steps, warmup) if c not in candidates]
                    candidates = sorted(candidates + extra, key=len)
                base_here = token_base(base, WorkloadSpec(**session.summary()), warmup)
                for seed, clip in zip(args.seeds, session.clips, strict=True):
                    entry = point["seeds"].setdefault(str(seed), {"runs": []})
                    entry["mask_share"] = float(clip.mask.mean())
                    runner = ClipRunner(session, clip, base_here, args.split)
                    entry["complete"] = False

                    def record(run: dict[str, Any], where: str = f"{key} seed {seed}", entry=entry, runner=runner):
                        entry["uncached_cpu_seconds"] = runner.uncached_seconds
                        log(
                            f"{where} {run['config']} {run['plan']}: FLOPs {run['flops_fraction']:.3f}, "
                            f"PSNR {run['psnr']:.2f} / mask {run['psnr_mask']:.2f} ({run['cpu_seconds']:.0f} s)"
                        )
                        save()

                    for config in configs:
                        plans = [config.plan(cached, steps, args.split) for cached in candidates]
                        plans = [p for p in plans if config.family == "step" or PARTIAL in p]
                        plans = list(dict.fromkeys(plans))
                        runs_for_config(runner, config, plans, args.targets, entry["runs"], record)
                        measured = {r["plan"] for r in entry["runs"] if r["config"] == config.name}
                        for plan in spanning(plans, args.points) if args.points else []:
                            if plan not in measured:
                                run = runner.cached(config, plan)
                                entry["runs"].append(run)
                                record(run)
                    entry["complete"] = True
                    save()
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    from hetcache.cli_common import run_cli

    sys.exit(run_cli(main, prog="token_vs_step"))
