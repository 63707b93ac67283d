"""`--search schedule` against plain TPE: denoising steps each study runs, and their fronts, calibration and held-out.

    python benchmarks/tuner.py --compare-search --height 256 --width 256 --frames 17 --steps 20 \\
        --tpe-trials 96 --schedule-trials 24

Both studies tune the same workload under the same budget, each with its own reference folder (each pays its
uncached passes). Denoising compute counts steps, not seconds: the steps every evaluated trial ran on every clip it
was scored on (from its recorded plans; twins of an earlier trial run nothing), split into computed (FULL/PARTIAL)
steps and all steps, plus the uncached passes (reference, the worker's timing pass, step-model capture passes).
The studies are checkpointed in SQLite under --work: a killed run resumes where it stopped.

Fronts: the Pareto front (FLOPs speedup vs the budget's metric) of each study's measured trials; at each FLOPs
level ≥ --min-level that a TPE front point sets, the gap is the TPE front's best quality at that speedup or more
minus the schedule front's (FLOPs within 0.1 % count as the same level). Then every front point of both studies
at ≥ the level is run on held-out clips (other seeds of the same kinds) and the same gaps are taken on the
held-out fronts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import harness
import optuna
from hetcache.tuner.budget import Budget, parse_budget
from hetcache.tuner.objective import Evaluator
from hetcache.tuner.references import ReferenceStore
from hetcache.tuner.results import TrialResult, best_feasible, pareto_front
from hetcache.tuner.schedule import STUDY_ATTR, trial_steps
from hetcache.tuner.study import TuneConfig, tune

from hetcache.policy import load_policy
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.spec import parse_clip_names


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--compare-search")
    group.add_argument("--compare-search", action="store_true", help="schedule search vs plain TPE (this module)")
    group.add_argument("--tpe-trials", type=int, default=96)
    group.add_argument("--schedule-trials", type=int, default=24)
    group.add_argument("--held-out", default="box-7001,moving-7002,two_regions-7003", help="held-out clips")
    group.add_argument("--min-level", type=float, default=2.0, help="least FLOPs speedup the fronts are compared at")


def compute(results: list[TrialResult], clips: int, steps: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """Denoising steps a study ran: its trials' and its uncached passes (reference + timing + capture)."""
    count = trial_steps(results)
    passes = 2 + int((attrs.get(STUDY_ATTR) or {}).get("capture_passes", 0))
    uncached = passes * clips * steps
    flops = sum(
        r.attrs["flops_fraction"] * len(r.attrs.get("decisions") or {}) * steps
        for r in results
        if "same_as" not in r.attrs and "decisions" in r.attrs
    )
    return {
        "evaluated_trials": count.trials,
        "trial_steps": count.steps,
        "trial_computed_steps": count.computed,
        "uncached_passes": passes,
        "uncached_steps": uncached,
        "computed_steps": count.computed + uncached,
        "all_steps": count.steps + uncached,
        "full_step_equivalents": flops + uncached,
    }


SAME_LEVEL = 1e-3  # relative FLOPs difference within which two points count as one level (the same step plan's
# FLOPs differ by ~1e-4 between policies whose unused token-level settings differ)


def front_points(front: list[tuple[float, float]], level: float) -> float | None:
    """Best quality among (speedup, quality) points at `level` or faster (None if none is)."""
    qualities = [q for s, q in front if s >= level * (1 - SAME_LEVEL)]
    return max(qualities) if qualities else None


def gaps(tpe: list[tuple[float, float]], schedule: list[tuple[float, float]], least: float) -> list[dict[str, Any]]:
    """At each level a TPE point (≥ least) sets: the TPE front's quality, the schedule front's, the gap."""
    rows = []
    for level in sorted({s for s, _ in tpe if s >= least}):
        ours, theirs = front_points(schedule, level), front_points(tpe, level)
        rows.append({"level": level, "tpe": theirs, "schedule": ours, "gap": None if ours is None else theirs - ours})
    return rows


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both speed and quality, fastest first."""
    out, best = [], float("-inf")
    for speed, quality in sorted(points, key=lambda p: (-p[0], -p[1])):
        if quality > best:
            out.append((speed, quality))
            best = quality
    return out


def run(args: argparse.Namespace, workload, argv: list[str] | None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget: Budget = parse_budget(args.budget)
    metric = budget.primary
    work = args.work
    session = LoadedWorkload(workload)
    clips, steps = len(session.clips), workload.steps
    studies: dict[str, dict[str, Any]] = {}
    for label, search, trials in (("tpe", "tpe", args.tpe_trials), ("schedule", "schedule", args.schedule_trials)):
        config = TuneConfig(
            workload=workload,
            budget=budget,
            out=work / label,
            trials=trials,
            seed=args.study_seed,
            study_name=f"bench-{label}",
            storage=str(work / "studies.db"),
            resume=True,  # create, or continue a killed run
            reference_dir=work / f"references-{label}",
            search=search,
        )
        started = time.perf_counter()
        result = tune(config, session)
        best = best_feasible(result.results, budget)
        front = pareto_front(result.results, budget)
        studies[label] = {
            "trials": len(result.results),
            "seconds_this_run": time.perf_counter() - started,
            "compute": compute(result.results, clips, steps, result.info.attrs),
            "best": None if best is None else {"trial": best.number, "speedup": best.value, "plan": best.plan()},
            "front": [
                {"trial": r.number, "speedup": r.value, metric: r.aggregate(budget)[metric], "plan": r.plan()}
                for r in front
            ],
            "_front": front,
        }
    calibration = gaps(
        *[[(p["speedup"], p[metric]) for p in studies[k]["front"]] for k in ("tpe", "schedule")], args.min_level
    )

    held = LoadedWorkload(workload.replace(clips=parse_clip_names(args.held_out)))
    evaluator = Evaluator(held, ReferenceStore(work / "references-held-out", held), budget, "flops")
    held_points: dict[str, list[tuple[float, float]]] = {}
    for label, study in studies.items():
        points = []
        for r in study.pop("_front"):
            if r.value >= args.min_level - 1e-9:
                outcome = evaluator.evaluate(load_policy(r.policy), prune=False)
                points.append((outcome.speedup_flops, budget.aggregate(outcome.quality, outcome.quality_worst)[metric]))
        held_points[label] = frontier(points)
    held_out = gaps(held_points["tpe"], held_points["schedule"], args.min_level)

    ratio = {
        key: studies["schedule"]["compute"][key] / max(studies["tpe"]["compute"][key], 1)
        for key in ("computed_steps", "all_steps", "full_step_equivalents")
    }
    command = harness.command_line("tuner.py", argv)
    size = f"{workload.height}x{workload.width}x{workload.num_frames}"
    print(
        f"Reference workload, {workload.weights} weights, {size}, {steps} steps, calibration clips "
        f"{','.join(c.name for c in session.clips)}, held-out {args.held_out}; contract {workload.contract}; budget "
        f"{budget.describe()}. `{command}`\n"
    )
    print("| study | trials | evaluated | computed steps | all steps | full-step equivalents | best |")
    print("|---|---|---|---|---|---|---|")
    for label, study in studies.items():
        c, best = study["compute"], study["best"]
        shown = "—" if best is None else f"{best['speedup']:.2f}x {best['plan']}"
        print(
            f"| {label} | {study['trials']} | {c['evaluated_trials']} | {c['computed_steps']} | {c['all_steps']} | "
            f"{c['full_step_equivalents']:.0f} | {shown} |"
        )
    print("\nschedule / tpe compute: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()))
    for title, rows in (("calibration clips", calibration), ("held-out clips", held_out)):
        print(f"\n{title}: {metric} of the fronts at each FLOPs level ≥ {args.min_level:g}x a TPE front point sets")
        print("| FLOPs level | tpe | schedule | gap (dB) |\n|---|---|---|---|")
        for row in rows:
            ours = "—" if row["schedule"] is None else f"{row['schedule']:.2f}"
            gap = "—" if row["gap"] is None else f"{row['gap']:+.2f}"
            print(f"| {row['level']:.2f}x | {row['tpe']:.2f} | {ours} | {gap} |")
        worst = [r["gap"] for r in rows if r["gap"] is not None]
        missing = sum(r["gap"] is None for r in rows)
        print(f"largest gap {max(worst) if worst else float('nan'):+.2f} dB; levels with no schedule point: {missing}")
    result = {
        "command": command,
        "workload": workload.to_dict(),
        "budget": budget.as_dict(),
        "held_out": args.held_out,
        "studies": studies,
        "compute_ratio": ratio,
        "calibration_gaps": calibration,
        "held_out_fronts": held_points,
        "held_out_gaps": held_out,
    }
    harness.write_result(Path(args.out), result, script="tuner.py", argv=argv)
