"""Tuner benchmark: trials needed to reach a feasible policy of a given speedup; tuned vs paper-settings policy.

    python benchmarks/tuner.py                    # reference workload (trained weights when installed, else random)
    python benchmarks/tuner.py --weights trained --height 256 --width 256 --frames 17 --steps 20 --trials 60
    python benchmarks/tuner.py --compare-search --tpe-trials 96 --schedule-trials 24   # tuner_search.py

The workload is profiled first (the tuner reads the profile's layer drift and step-curve polynomial), then tuned twice
with the same seed and budget, with and without the warm start (paper settings, timestep-only, profile guesses). The
paper-settings policy, translated to this model, is run on the same clips for comparison. Prints markdown, writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any

import harness
import optuna
import tuner_search
from hetcache.tuner.budget import Budget, parse_budget
from hetcache.tuner.objective import Evaluator, Outcome
from hetcache.tuner.references import ReferenceStore
from hetcache.tuner.results import TrialResult, best_feasible
from hetcache.tuner.space import SearchSpace, paper_params
from hetcache.tuner.study import TuneConfig, tune

from hetcache.atomic import write_json
from hetcache.fingerprint import model_fingerprint
from hetcache.policy import WorkloadSpec, model_spec_from_fingerprint
from hetcache.workloads.execute import LoadedWorkload


def trials_to_reach(results: list[TrialResult], budget: Budget, target: float) -> int | None:
    """How many trials (in the order they ran) until one met the budget with at least `target` speedup."""
    for count, result in enumerate(sorted(results, key=lambda r: r.number), start=1):
        if result.feasible(budget) and result.value >= target:
            return count
    return None


def policy_row(label: str, outcome: Outcome, budget: Budget, plan: str) -> dict[str, Any]:
    aggregate = budget.aggregate(outcome.quality, outcome.quality_worst)
    row = {"policy": label, "plan": plan, "speedup_flops": outcome.speedup_flops, "speedup_time": outcome.speedup_time}
    for metric in budget.metrics:
        row[metric] = aggregate.get(metric)
    row["meets_budget"] = budget.feasible(aggregate, outcome.value("flops"))
    return row


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.workload_flags(parser, height=128, width=128, frames=9, steps=12, clips="box,moving")
    parser.add_argument("--budget", default="psnr=35")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--targets", default="1.5,2.0,2.5", help="speedups to reach (FLOPs)")
    parser.add_argument("--study-seed", type=int, default=0, help="the sampler's seed (--seed: the noise)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-tuner"), help="scratch folder (studies, profile)")
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/tuner[_search].json)")
    tuner_search.add_flags(parser)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    workload = harness.workload_from_flags(args)
    if args.compare_search:
        args.out = args.out or Path("benchmarks/results/tuner_search.json")
        tuner_search.run(args, workload, argv)
        return
    args.out = args.out or Path("benchmarks/results/tuner.json")
    weights = workload.weights
    budget = parse_budget(args.budget)
    targets = [float(t) for t in args.targets.split(",")]
    work = args.work
    session = LoadedWorkload(workload)

    from hetcache.profiler.cli import main as profile_main

    profile_dir = work / "profile"
    workload_file = write_json(work / "workload.json", workload.to_dict())  # the profiler reads the same workload
    profile_args = ["--workload", str(workload_file)]
    with contextlib.redirect_stdout(io.StringIO()):
        code = profile_main([*profile_args, "--out", str(profile_dir), "--overwrite"])
    if code != 0:
        sys.exit(f"profiling failed (exit {code})")

    (work / "studies.db").unlink(missing_ok=True)  # fresh studies each run; references and profile are reused
    studies: dict[str, dict[str, Any]] = {}
    for label, warm in (("warm start", True), ("no warm start", False)):
        config = TuneConfig(
            workload=workload,
            budget=budget,
            out=work / label.replace(" ", "-"),
            trials=args.trials,
            seed=args.study_seed,
            study_name=f"bench-{'warm' if warm else 'cold'}",
            storage=str(work / "studies.db"),
            resume=False,
            profile=profile_dir,
            warm_start=warm,
            reference_dir=work / "references",
        )
        started = time.perf_counter()
        result = tune(config, session)
        best = best_feasible(result.results, budget)
        studies[label] = {
            "seconds": time.perf_counter() - started,
            "trials": len(result.results),
            "reach": {str(t): trials_to_reach(result.results, budget, t) for t in targets},
            "best": None
            if best is None
            else {"trial": best.number, "speedup_flops": best.value, "speedup_time": best.attrs["speedup_time"]},
            "space": result.info.attrs["search_space"],
            "_best": best,
        }

    space = SearchSpace.from_dict(studies["warm start"]["space"])
    evaluator = Evaluator(session, ReferenceStore(work / "references", session), budget, "flops")
    model = model_spec_from_fingerprint(model_fingerprint(session.transformer))
    spec = WorkloadSpec(**session.summary())
    paper = space.policy(space.clamp(paper_params(len(space.main_order))), "paper", model, spec)
    rows = [
        policy_row("paper settings (translated)", evaluator.evaluate(paper, prune=False), budget, evaluator.plan(paper))
    ]
    for label in ("warm start", "no warm start"):
        best = studies[label].pop("_best")
        if best is not None:
            policy = space.policy(best.params, label, model, spec)
            rows.append(
                policy_row(
                    f"tuned ({label}, trial {best.number})",
                    evaluator.evaluate(policy, prune=False),
                    budget,
                    evaluator.plan(policy),
                )
            )
    for study in studies.values():
        study.pop("_best", None)

    command = harness.command_line("tuner.py", argv)
    reach_table = markdown(
        ["speedup target (FLOPs)", *[f"trials, {label}" for label in studies]],
        [[f"≥ {t:g}x", *[studies[label]["reach"][str(t)] for label in studies]] for t in targets],
    )
    metric_cols = budget.metrics
    policy_table = markdown(
        ["policy", "plan", "FLOPs speedup", "time speedup", *metric_cols, "meets budget"],
        [
            [
                r["policy"],
                r["plan"],
                r["speedup_flops"],
                r["speedup_time"],
                *[r[m] for m in metric_cols],
                r["meets_budget"],
            ]
            for r in rows
        ],
    )
    header = (
        f"Reference workload, {weights} weights, {args.height}x{args.width}x{args.frames}, {args.steps} steps, clips "
        f"{args.clips}; budget {budget.describe()}, min speedup {budget.min_speedup:g}x; {args.trials} trials, seed "
        f"{args.study_seed}. `{command}`"
    )
    print(header + "\n\n" + reach_table + "\n\n" + policy_table)
    for label, study in studies.items():
        print(f"\n{label}: {study['trials']} trials in {study['seconds']:.0f} s, best {study['best']}")
    result = {
        "command": command,
        "workload": workload.to_dict(),
        "budget": budget.as_dict(),
        "budget_mode": budget.mode,
        "min_speedup": budget.min_speedup,
        "trials": args.trials,
        "study_seed": args.study_seed,
        "studies": studies,
        "policies": rows,
    }
    harness.write_result(args.out, result, script="tuner.py", argv=argv)


if __name__ == "__main__":
    main()
