"""`hetcache-tune`: the fastest cache policy that keeps quality within a budget, on one machine or many.

hetcache-tune --budget psnr=30 --trials 40 --out runs/tune
hetcache-tune --budget psnr_mask=28,ssim=0.95 --worst --profile runs/profile --export-pareto runs/tune/pareto
hetcache-tune --budget psnr=30 --storage postgresql+psycopg://user:pass@db:5432/hetcache --study-name s1 --resume
hetcache-tune export --storage postgresql+psycopg://user:pass@db:5432/hetcache --study-name s1 --export policy.json
hetcache-tune reference-policies --budget psnr=30 --budget psnr=35 --trials 60 --policies-dir policies

Exit codes: 0 policy written; 2 bad input (budget, storage, workload…); 3 no trial met the budget (nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from hetcache import __version__
from hetcache.cli_common import add_workload_arguments, format_table, progress_enabled, run_cli, workload_from_args

PROG = "hetcache-tune"
NO_FEASIBLE_EXIT = 3


def _budget_arguments(
    parser: argparse.ArgumentParser, required: bool, repeat: bool = False, min_speedup: float | None = 1.1
) -> None:
    group = parser.add_argument_group("quality budget")
    group.add_argument(
        "--budget",
        required=required,
        action="append" if repeat else "store",
        help="bounds over hetcache.metrics names, e.g. psnr=30 or psnr_mask=28,ssim=0.95"
        + (" (repeat for several policies)" if repeat else ""),
    )
    group.add_argument("--worst", action="store_true", help="every clip must meet the budget (default: the mean)")
    group.add_argument(
        "--min-speedup",
        type=float,
        default=min_speedup,
        help=f"least speedup a policy must bring to count (default {min_speedup or 'the study’s'})",
    )


def _search_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    group = parser.add_argument_group("search")
    group.add_argument("--objective", choices=("flops", "time"), default="flops", help="speedup measure to maximise")
    group.add_argument("--trials", type=int, default=40, help="finished trials the study should hold (default 40)")
    group.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    group.add_argument("--sampler-seed", type=int, help="TPE seed (default: --seed, else 0)")
    group.add_argument("--profile", type=Path, help="profile folder from hetcache-profile (layer order, step curve)")
    group.add_argument("--no-warm-start", action="store_true", help="do not enqueue the paper / timestep-only points")
    group.add_argument("--lpips-weights", type=Path, help="LPIPS weights folder (needed to bound lpips)")
    group.add_argument("--out", type=Path, default=Path(default_out), help=f"run folder (default {default_out})")
    store = parser.add_argument_group("study storage (several workers: one per GPU, same --storage and --study-name)")
    store.add_argument("--study-name", help="default: <workload>-<budget>, e.g. reference-psnr30")
    store.add_argument("--storage", help="database URL or .db / .log file (default OUT/study.db)")
    store.add_argument("--resume", action="store_true", help="continue the study, or join it as another worker")
    store.add_argument("--heartbeat", type=int, default=30, help="trial heartbeat interval in seconds (RDB storages)")
    store.add_argument("--grace", type=int, default=120, help="seconds without heartbeat before a trial is re-run")


def _export_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    group = parser.add_argument_group("export")
    group.add_argument("--export", type=Path, help=f"policy file to write ({default_help})")
    group.add_argument("--export-pareto", type=Path, help="folder for a ladder of policies along the Pareto front")
    group.add_argument("--name", help="name of the exported policy (default <study>-trial<N>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hetcache {__version__}")
    _budget_arguments(parser, required=True)
    _search_arguments(parser, "runs/tune")
    _export_arguments(parser, "default OUT/policy.json")
    add_workload_arguments(parser)
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} export", description="Export the best feasible policy (and the Pareto ladder) of a study."
    )
    parser.add_argument("--storage", required=True, help="database URL or .db / .log file holding the study")
    parser.add_argument("--study-name", required=True)
    _budget_arguments(parser, required=False, min_speedup=None)
    _export_arguments(parser, "default policy.json")
    return parser


def build_reference_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} reference-policies",
        description="Tune the reference workload once per budget and write policies/reference-<budget>.json.",
    )
    _budget_arguments(parser, required=True, repeat=True)
    _search_arguments(parser, "runs/reference-policies")
    parser.add_argument("--policies-dir", type=Path, default=Path("policies"), help="where to write (default policies)")
    add_workload_arguments(parser)
    return parser


def _heartbeat(args: argparse.Namespace):
    from hetcache.errors import InputError

    from .study_storage import Heartbeat

    if args.heartbeat < 1 or args.grace <= args.heartbeat:
        raise InputError(
            f"--heartbeat {args.heartbeat} / --grace {args.grace}: the grace period must exceed the heartbeat ≥ 1 s.",
            "e.g. --heartbeat 30 --grace 120.",
        )
    return Heartbeat(interval=args.heartbeat, grace=args.grace)


def _config(args: argparse.Namespace, budget, workload, **overrides):
    from .study import TuneConfig

    seed = args.sampler_seed if args.sampler_seed is not None else (args.seed if args.seed is not None else 0)
    values = dict(
        workload=workload,
        budget=budget,
        out=args.out,
        objective=args.objective,
        trials=args.trials,
        timeout=args.timeout,
        seed=seed,
        study_name=args.study_name,
        storage=args.storage,
        resume=args.resume,
        profile=args.profile,
        warm_start=not args.no_warm_start,
        heartbeat=_heartbeat(args),
        lpips_weights=args.lpips_weights,
        progress=progress_enabled(),
    )
    values.update(overrides)
    return TuneConfig(**values)


def _print_summary(result, budget) -> None:
    from .results import summary_rows

    print(format_table(summary_rows(result.results, budget)))
    feasible = sum(r.feasible(budget) for r in result.results)
    print(
        f"\nstudy '{result.info.name}' in {result.info.storage}: {len(result.results)} completed trials "
        f"({result.ran} run by this worker in {result.seconds:.0f} s), {feasible} meet {budget.describe()}"
    )


def _export(results, budget, info, export: Path | None, pareto: Path | None, name: str | None) -> int:
    from .export import NoFeasibleTrial, export_best, export_pareto

    if pareto is not None:
        try:
            rows = export_pareto(results, budget, info, pareto)
            print(f"wrote {pareto}/: {len(rows)} policies along the Pareto front (speedup vs {budget.primary})")
        except NoFeasibleTrial as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
    if export is None:
        return 0
    try:
        best, path = export_best(results, budget, info, export, name=name)
    except NoFeasibleTrial as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return NO_FEASIBLE_EXIT
    quality = best.aggregate(budget)
    shown = ", ".join(f"{m} {quality.get(m, float('nan')):.4g}" for m in budget.metrics)
    print(
        f"wrote {path}: trial {best.number}, {best.attrs['speedup_flops']:.2f}x FLOPs, "
        f"{best.attrs['speedup_time']:.2f}x denoising time, {shown}"
    )
    return 0


def command_tune(argv: Sequence[str]) -> int:
    import optuna

    from .budget import parse_budget
    from .study import tune

    args = build_parser().parse_args(argv)
    budget = parse_budget(args.budget, args.worst, args.min_speedup)
    workload = workload_from_args(args)
    config = _config(args, budget, workload)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        result = tune(config)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished trials stay in the study (continue with --resume).", file=sys.stderr)
        return 130
    _print_summary(result, budget)
    return _export(
        result.results, budget, result.info, args.export or args.out / "policy.json", args.export_pareto, args.name
    )


def command_export(argv: Sequence[str]) -> int:
    from .budget import budget_from_attrs, parse_budget
    from .study import load_results

    args = build_export_parser().parse_args(argv)
    info, results = load_results(args.storage, args.study_name)
    study_budget = budget_from_attrs(info.attrs)
    min_speedup = args.min_speedup if args.min_speedup is not None else study_budget.min_speedup
    if args.budget is not None:
        budget = parse_budget(args.budget, args.worst, min_speedup)
    else:
        budget = dataclasses.replace(study_budget, min_speedup=min_speedup)
    export = args.export if args.export is not None or args.export_pareto is not None else Path("policy.json")
    return _export(results, budget, info, export, args.export_pareto, args.name)


def command_reference(argv: Sequence[str]) -> int:
    import optuna

    from .budget import parse_budget
    from .ship import tune_reference_policies

    args = build_reference_parser().parse_args(argv)
    budgets = [parse_budget(text, args.worst, args.min_speedup) for text in args.budget]
    workload = workload_from_args(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _config(args, budgets[0], workload, resume=True)
    written = tune_reference_policies(budgets, config, args.policies_dir)
    for path in written:
        print(f"wrote {path}")
    return 0 if len(written) == len(budgets) else NO_FEASIBLE_EXIT


COMMANDS = {"export": command_export, "reference-policies": command_reference}


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return command_tune(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
