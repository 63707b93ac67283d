"""`hetcache-tune`: the fastest cache policy that keeps quality within a budget, on one machine or many."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hetcache import cli_types
from hetcache.atomic import write_marker
from hetcache.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_NO_FEASIBLE,
    add_workload_arguments,
    check_output_file,
    check_output_folder,
    command_parser,
    format_table,
    format_value,
    progress_enabled,
    run_cli,
    workload_from_args,
)
from hetcache.contracts import parse_contract
from hetcache.errors import InputError
from hetcache.metrics import METRICS, check_bound

from . import interrupts

PROG = "hetcache-tune"
NO_FEASIBLE_EXIT = EXIT_NO_FEASIBLE
CODES = (0, 1, 2, 3, 130)
EXAMPLES = (
    "hetcache-tune --budget psnr=30 --trials 40 --out runs/tune                  # a new study",
    "hetcache-tune --budget psnr=30 --trials 60 --out runs/tune --resume         # continue it to 60 trials",
    "hetcache-tune --budget psnr_mask=28,ssim=0.95 --worst --profile runs/profile --export-pareto runs/tune/pareto",
    "hetcache-tune --budget psnr=30 --storage postgresql+psycopg://user:pass@db:5432/hetcache --study-name s1 --join",
    "hetcache-tune --budget psnr=30 --max-cache-gib 40 --memory-at 720x1280x81   # caches that fit 40 GiB at 720p",
    "hetcache-tune export --storage runs/tune/study.db --study-name reference-psnr30 --export policy.json",
    "hetcache-tune reference-policies --budget psnr=30 --budget psnr=35 --trials 60 --policies-dir policies",
)
EXPORT_EXAMPLES = (
    "hetcache-tune export --storage runs/tune/study.db --study-name reference-psnr30 --export policy.json",
    "hetcache-tune export --storage postgresql+psycopg://user:pass@db:5432/hetcache --study-name s1 \\",
    "    --budget psnr=35 --export policy-35.json --export-pareto pareto/",
    "hetcache-tune export --storage runs/tune/study.db --study-name reference-psnr30 --max-cache-gib 0.05",
)
REFERENCE_EXAMPLES = (
    "hetcache-tune reference-policies --budget psnr=30 --budget psnr=35 --trials 60 --policies-dir policies",
)


def _budget_arguments(
    parser: argparse.ArgumentParser, required: bool, repeat: bool = False, tuning: bool = True
) -> None:
    """The budget flags; `tuning` (not exporting): defaults of a new study, and where the memory bound is measured
    (fixed when the study is created)."""
    min_speedup = 1.1 if tuning else None
    group = parser.add_argument_group("budget (quality, speed, memory)")
    group.add_argument(
        "--budget",
        required=required,
        action="append" if repeat else cli_types.Once,
        help="bounds over hetcache.metrics names, e.g. psnr=30 or psnr_mask=28,ssim=0.95; a bare value (30) bounds "
        "the contract's budget metric: psnr under --contract none, psnr_mask under paste, feather and blend"
        + (" (repeat for several policies)" if repeat else ""),
    )
    group.add_argument("--worst", action="store_true", help="every clip must meet the budget (default: the mean)")
    group.add_argument(
        "--min-speedup",
        type=cli_types.number(0.0, low_open=True),
        default=min_speedup,
        help=f"least speedup (> 0) a policy must bring to count (default {min_speedup or 'the study’s'})",
    )
    group.add_argument(
        "--max-cache-gib",
        type=cli_types.number(0.0, low_open=True),
        metavar="GIB",
        help="most device memory (GiB, > 0) hetcache may hold for a policy: caches, working buffers, offload "
        "staging, not the weights (docs/memory.md); a trial whose policy exceeds it is not run"
        + ("" if tuning else " (default the study’s)"),
    )
    if tuning:
        group.add_argument(
            "--memory-at",
            type=cli_types.clip_size,
            metavar="HxWxF",
            help="measure --max-cache-gib at this clip size, e.g. 720x1280x81, with the clips' masks scaled to it "
            "(default: the tuned workload's clips)",
        )


def _search_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    group = parser.add_argument_group("search")
    group.add_argument("--objective", choices=("flops", "time"), default="flops", help="speedup measure to maximise")
    group.add_argument(
        "--trials",
        type=cli_types.integer(1),
        default=40,
        help="finished trials the study holds in total, warm starts and earlier runs included (default 40)",
    )
    group.add_argument(
        "--timeout", type=cli_types.number(0.0, low_open=True), help="stop starting trials after this many seconds"
    )
    group.add_argument(
        "--search",
        choices=("tpe", "schedule"),
        default="tpe",
        help="tpe: sample the whole search space (default); schedule: step plans ranked by a step model from one "
        "uncached pass per clip, the best verified as trials (README, 'Affordable studies')",
    )
    group.add_argument("--sampler-seed", type=cli_types.integer(0), help="TPE seed (default: --seed, else 0)")
    group.add_argument("--profile", type=Path, help="profile folder from hetcache-profile (layer order, step curve)")
    group.add_argument("--no-warm-start", action="store_true", help="do not enqueue the paper / timestep-only points")
    group.add_argument(
        "--space",
        action="append",
        metavar="NAME=LOW:HIGH",
        help="replace a numeric parameter's range, e.g. reuse_threshold=0.01:2 or full_ratio=1:8 (repeatable; "
        "stored with the study, so --resume / --join must pass the same)",
    )
    group.add_argument("--lpips-weights", type=Path, help="LPIPS weights folder (needed to bound lpips)")
    group.add_argument("--out", type=Path, default=Path(default_out), help=f"run folder (default {default_out})")
    store = parser.add_argument_group("study storage (several workers: one per GPU, same --storage and --study-name)")
    store.add_argument("--study-name", type=cli_types.name, help="default: <workload>-<budget>, e.g. reference-psnr30")
    store.add_argument("--storage", help="database URL or .db / .log file (default OUT/study.db)")
    mode = store.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an existing study (refused if there is none)")
    mode.add_argument(
        "--join", action="store_true", help="create the study, or join it if another worker (or run) created it"
    )
    store.add_argument(
        "--heartbeat", type=cli_types.integer(1), default=30, help="trial heartbeat interval in seconds (RDB storages)"
    )
    store.add_argument(
        "--grace", type=cli_types.integer(2), default=120, help="seconds without heartbeat before a trial is re-run"
    )


def _export_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    group = parser.add_argument_group("export")
    group.add_argument("--export", type=Path, help=f"policy file to write ({default_help})")
    group.add_argument("--export-pareto", type=Path, help="folder for a ladder of policies along the Pareto front")
    group.add_argument("--name", help="name of the exported policy (default <study>-trial<N>)")
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a policy file exported from another study, or a Pareto folder hetcache wrote",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        argparse.ArgumentParser,
        PROG,
        "The fastest cache policy that keeps quality within a budget, on one machine or many.",
        EXAMPLES,
        CODES,
    )
    _budget_arguments(parser, required=True)
    _search_arguments(parser, "runs/tune")
    _export_arguments(parser, "default OUT/policy.json")
    add_workload_arguments(parser)
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        argparse.ArgumentParser,
        f"{PROG} export",
        "Export the best feasible policy (and the Pareto ladder) of a study.",
        EXPORT_EXAMPLES,
        CODES,
    )
    parser.add_argument("--storage", required=True, help="database URL or .db / .log file holding the study")
    parser.add_argument("--study-name", type=cli_types.name, required=True)
    _budget_arguments(parser, required=False, tuning=False)
    _export_arguments(parser, "default policy.json")
    _validation_arguments(parser)
    return parser


def build_reference_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        argparse.ArgumentParser,
        f"{PROG} reference-policies",
        "Tune the reference workload once per budget and write policies/reference-<budget>.json.",
        REFERENCE_EXAMPLES,
        CODES,
    )
    _budget_arguments(parser, required=True, repeat=True)
    _search_arguments(parser, "runs/reference-policies")
    parser.add_argument("--policies-dir", type=Path, default=Path("policies"), help="where to write (default policies)")
    _validation_arguments(parser)
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
    from .space import parse_space_ranges
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
        resume=args.resume or args.join,
        profile=args.profile,
        warm_start=not args.no_warm_start,
        heartbeat=_heartbeat(args),
        lpips_weights=args.lpips_weights,
        progress=progress_enabled(),
        search=args.search,
        space_ranges=parse_space_ranges(args.space),
    )
    values.update(overrides)
    return TuneConfig(**values)


def with_memory_bound(budget, args: argparse.Namespace, study_budget=None):
    """The budget with the memory bound the flags ask for (--max-cache-gib, --memory-at), or the study's."""
    from .budget import MemoryBound

    at = getattr(args, "memory_at", None)
    if at is not None and args.max_cache_gib is None:
        raise InputError(
            "--memory-at says where to measure --max-cache-gib, but no --max-cache-gib was given.",
            "add --max-cache-gib GIB, or drop --memory-at.",
        )
    memory = study_budget.memory if study_budget is not None else None
    if args.max_cache_gib is not None:
        where = at if study_budget is None else (memory.at if memory is not None else None)
        memory = MemoryBound(float(args.max_cache_gib), where)
    return dataclasses.replace(budget, memory=memory)


def check_budget_bounds(budget) -> None:
    """Refuse, before any compute, a bound outside the range its metric can take (hetcache.metrics.check_bound)."""
    from hetcache.metrics import bound_range

    for metric, bound in budget.bounds:
        problem = check_bound(metric, bound)
        if problem is not None:
            low, high, _ = bound_range(metric)
            raise InputError(
                f"--budget {metric}={bound:g} means nothing: {problem}.",
                f"give a bound between {low:g} and {high:g}, e.g. --budget psnr=30 or --budget ssim=0.95.",
            )


def note_whole_frame_budget(budget, contract) -> None:
    """Say so when a budget bounds whole-frame quality under a contract that keeps the source outside the edit."""
    from hetcache.contracts import AREA_NOTE

    whole = [m for m in budget.metrics if m in ("psnr", "ssim")]
    if whole and contract.keeps_source:
        print(
            f"{PROG}: note: under contract {contract}, {AREA_NOTE}; --budget {whole[0]} is met by shrinking the "
            f"error's share of the frame, not the error (bound {contract.budget_metric} for the edit itself).",
            file=sys.stderr,
        )


def miss_label(result, budget) -> str:
    """Which constraints a completed, fully scored trial misses, e.g. 'misses min speedup 1.1x (1.04x)'."""
    aggregate = result.aggregate(budget)
    misses = [
        f"{metric} {'≥' if METRICS[metric] else '≤'} {bound:g} ({format_value(aggregate.get(metric, float('nan')))})"
        for metric, bound in budget.bounds
        if budget.violation(metric, aggregate.get(metric)) > 0
    ]
    if result.value < budget.min_speedup:
        misses.append(f"min speedup {budget.min_speedup:g}x ({result.value:.2f}x)")
    if not result.fits(budget):
        misses.append(f"max cache {budget.memory.max_gib:g} GiB ({format_value(result.cache_gib)} GiB)")
    return "misses " + ", ".join(misses) if misses else "misses budget"


def _print_summary(result, budget, trials: int | None = None) -> None:
    from .front_bounds import best_bound_warning, front_rows
    from .results import summary_rows

    rows = summary_rows(result.results, budget)
    by_number = {r.number: r for r in result.results}
    for row in rows:
        if row["state"] == "misses budget":
            row["state"] = miss_label(by_number[row["trial"]], budget)
    print(format_table(rows))
    feasible = sum(r.feasible(budget) for r in result.results)
    asked = f" of the --trials {trials} it should hold" if trials is not None else ""
    print(
        f"\nstudy '{result.info.name}' in {result.info.storage}: {len(result.results)} completed trials{asked} "
        f"({result.ran} run by this worker in {result.seconds:.0f} s), {feasible} meet {budget.describe()}"
    )
    print(steps_line(result))
    if result.pending:
        shown = ", ".join(f"trial {p.number} ({p.reason})" for p in result.pending)
        print(f"{len(result.pending)} points wait for a worker: {shown}; the same command with --resume runs them")
    if result.over_memory:
        shown = ", ".join(f"trial {n}: {format_value(gib)} GiB" for n, gib in result.over_memory[:5])
        more = f" and {len(result.over_memory) - 5} more" if len(result.over_memory) > 5 else ""
        print(
            f"{len(result.over_memory)} more trials were not run: their policy misses max cache "
            f"{budget.memory.max_gib:g} GiB ({shown}{more})"
        )
    front = front_rows(result.results, budget, result.info.attrs)
    if front:
        print("\nPareto front (the search-space bounds each point sits on):\n" + format_table(front))
    warning = best_bound_warning(result.results, budget, result.info.attrs)
    if warning is not None:
        print(f"{PROG}: {warning}", file=sys.stderr)


def steps_line(result) -> str:
    """What the study's denoising cost: steps its trials ran, and the uncached passes over the clips."""
    from .schedule import STUDY_ATTR, trial_steps

    count = trial_steps(result.results)
    attrs = result.info.attrs
    clips, steps = len(attrs.get("clips") or ()), int((attrs.get("workload") or {}).get("steps") or 0)
    capture = (attrs.get(STUDY_ATTR) or {}).get("capture_passes", 0)
    extra = f" + {capture} step-model capture pass{'es' if capture != 1 else ''}" if capture else ""
    return (
        f"denoising steps: {count.steps} run by {count.trials} evaluated trials ({count.computed} FULL/PARTIAL), "
        f"plus {clips} x {steps} per uncached pass over the clips (reference{extra}, timing)"
    )


def _validation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("held-out validation")
    group.add_argument(
        "--validate-clips",
        metavar="CLIPS",
        help="score the Pareto front on these clips (other seeds than the study's, e.g. box-7,small_box-7) under the "
        "study's workload and editing contract, and drop the points another front point dominates there",
    )
    group.add_argument(
        "--keep-dominated", action="store_true", help="with --validate-clips: flag dominated points instead of dropping"
    )


def _export(
    results, budget, info, export: Path | None, pareto: Path | None, name: str | None, validation=None, keep=False
) -> int:
    from .export import NoFeasibleTrial, export_best, export_pareto
    from .results import pareto_front

    front = extra = None
    if validation is not None:
        from .validate import validation_report

        print(validation_report(results, validation, keep))
        dropped = set() if keep else validation.dominated
        results = [r for r in results if r.number not in dropped]
        front = [r for r in pareto_front(results, budget) if r.number in validation.scores]
        extra = validation.provenance
    if pareto is not None:
        try:
            rows = export_pareto(results, budget, info, pareto, front, extra)
            print(f"wrote {pareto}/: {len(rows)} policies along the Pareto front (speedup vs {budget.primary})")
        except NoFeasibleTrial as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
    if export is None:
        return 0
    try:
        best, path = export_best(results, budget, info, export, name=name, extra=extra)
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


def _exported_from(path: Path) -> str | None:
    """The study a policy file or Pareto folder was exported from ('' when hetcache-tune did not export it; None
    when the file is no policy at all, by its schema, so that it is never replaced)."""
    from hetcache.errors import PolicyError
    from hetcache.policy import SCHEMA_PREFIX, read_policy_json

    try:
        data = read_policy_json(path / "index.json" if path.is_dir() else path)
    except PolicyError:
        return "" if path.is_dir() else None
    if not isinstance(data, dict):
        return "" if path.is_dir() else None
    if not path.is_dir() and not str(data.get("schema", "")).startswith(SCHEMA_PREFIX):
        return None
    study = data.get("study") if path.is_dir() else (data.get("provenance") or {}).get("study")
    return study if isinstance(study, str) else ""


def check_export_targets(export: Path | None, pareto: Path | None, study: str, overwrite: bool) -> list[Path]:
    """Check the export locations before any compute; returns those that hold another study's export.

    An export of the same study is simply replaced (a resumed study re-exports). Anything else is replaced only
    with --overwrite; if the study then has no feasible trial, it is removed, so no stale policy stays behind.
    """
    foreign = []
    for path, flag in ((export, "--export"), (pareto, "--export-pareto")):
        if path is None:
            continue
        if flag == "--export":
            check_output_file(path, flag)
        else:
            check_output_folder(path, overwrite=True, what="Pareto folder", flag=flag, kind="pareto")
        if not path.exists() or _exported_from(path) == study:
            continue
        owner = _exported_from(path)
        if owner is None:
            raise InputError(
                f"{flag} '{path}' is not a policy file (no hetcache.policy schema); it is never replaced, even with "
                "--overwrite.",
                f"choose another {flag}, or move that file away yourself.",
            )
        if not overwrite:
            holds = f"the export of study '{owner}'" if owner else "a policy hetcache-tune did not export"
            raise InputError(
                f"{flag} '{path}' holds {holds}, not of study '{study}'.",
                f"choose another {flag} (or --out), or pass --overwrite to replace it (it is removed if no trial "
                "meets the budget).",
            )
        foreign.append(path)
    return foreign


def _study_names(url: str, heartbeat) -> list[str] | None:
    """The studies in a storage (None when its file does not exist yet, so nothing is created by looking)."""
    import optuna

    from .study_storage import file_of, open_storage

    path = file_of(url)
    if path is not None and not path.exists():
        return None
    return optuna.get_all_study_names(open_storage(url, heartbeat))


def check_study_mode(args: argparse.Namespace, name: str, url: str, heartbeat) -> None:
    """--resume needs the study, a plain run needs it absent, --join takes either (checked before any compute)."""
    from .study_storage import display_url

    if args.join:
        return
    names = _study_names(url, heartbeat) or []
    if args.resume and name not in names:
        holds = f"it holds {', '.join(names)}" if names else "it holds no study"
        raise InputError(
            f"--resume: study '{name}' does not exist in {display_url(url)} ({holds}).",
            "drop --resume to start it, or pass the --budget / --study-name of the study to continue "
            "(the default study name follows the workload and the budget).",
        )
    if not args.resume and name in names:
        raise InputError(
            f"study '{name}' already exists in {display_url(url)}.",
            "pass --resume to continue it, --join to add this worker to it, or choose another --study-name.",
        )


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
    """Drop Optuna's log records of a trial failed by Ctrl+C (its traceback and what follows it): the CLI prints
    one line instead."""
    interrupted = []

    def keep(record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is KeyboardInterrupt:
            interrupted.append(record)
        return not interrupted

    handlers = logging.getLogger("optuna").handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def command_tune(argv: Sequence[str]) -> int:
    import optuna

    from .budget import parse_budget
    from .study import tune
    from .study_storage import file_of, resolve_url

    args = build_parser().parse_args(argv)
    workload = workload_from_args(args)
    contract = workload.editing_contract
    budget = parse_budget(args.budget, args.worst, args.min_speedup, contract.budget_metric)
    budget = with_memory_bound(budget, args)
    check_budget_bounds(budget)
    note_whole_frame_budget(budget, contract)
    config = _config(args, budget, workload)
    check_output_folder(args.out, reuse=True, what="tuning folder", kind="tune")
    url = resolve_url(config.storage, config.out)
    if config.storage is not None and file_of(url) is not None:
        check_output_file(file_of(url), "--storage", replace=False)
    export = args.export or args.out / "policy.json"
    foreign = check_export_targets(export, args.export_pareto, config.name(), args.overwrite)
    with contextlib.ExitStack() as held:
        if not args.join:  # workers that join share the folder; any other run has it alone, or is refused at once
            held.enter_context(claim_out(args.out))
        check_study_mode(args, config.name(), url, config.heartbeat)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with interrupts.handled(), quiet_interrupts():
                result = tune(config)
        except KeyboardInterrupt as exc:
            requeued = getattr(exc, "requeued", None)
            again = f"; trial {requeued}'s point is queued to run again" if requeued is not None else ""
            print(
                f"{PROG}: interrupted; finished trials stay in the study{again} (continue with --resume).",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        return _finish(result, budget, args, config, export, foreign)


@contextlib.contextmanager
def claim_out(out: Path) -> Iterator[None]:
    """Hold the tuning folder for this run alone (`hetcache.locks.claim`): a second run on it without --join is
    refused at once, naming the process that holds it."""
    from hetcache.errors import InputError
    from hetcache.locks import ClaimHeld, claim

    try:
        with claim(out.resolve()):
            yield
    except ClaimHeld as held:
        raise InputError(
            f"--out '{out}' is being tuned right now by another hetcache-tune ({held.holder}).",
            "pass --join to add this worker to its study, wait for it to finish, or choose another --out.",
        ) from None


def _finish(result, budget, args: argparse.Namespace, config, export: Path, foreign: list[Path]) -> int:
    """Print the summary, export the policy and remove other studies' exports that --overwrite named."""
    _print_summary(result, budget, args.trials)
    code = _export(result.results, budget, result.info, export, args.export_pareto, args.name)
    for path in foreign:
        if path.exists() and _exported_from(path) != config.name():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            print(f"{PROG}: removed '{path}' (another study's export), so no stale policy stays beside this study.")
    return code


def command_export(argv: Sequence[str]) -> int:
    from .budget import budget_from_attrs, parse_budget
    from .study import load_results

    args = build_export_parser().parse_args(argv)
    export = args.export if args.export is not None or args.export_pareto is not None else Path("policy.json")
    if args.budget is not None:
        check_budget_bounds(parse_budget(args.budget, args.worst, args.min_speedup or 1.0))
    check_export_targets(export, args.export_pareto, args.study_name, args.overwrite)
    info, results = load_results(args.storage, args.study_name)
    study_budget = budget_from_attrs(info.attrs)
    min_speedup = args.min_speedup if args.min_speedup is not None else study_budget.min_speedup
    if args.budget is not None:
        contract = parse_contract((info.attrs.get("workload") or {}).get("contract"), "the study's contract")
        budget = parse_budget(args.budget, args.worst, min_speedup, contract.budget_metric)
    else:
        budget = dataclasses.replace(study_budget, min_speedup=min_speedup)
    budget = with_memory_bound(budget, args, study_budget)
    validation = None
    if args.validate_clips is not None:
        from .validate import held_out_workload, study_workload, validate_front

        held_out = held_out_workload(study_workload(info), args.validate_clips, info.name)
        validation = validate_front(results, budget, info, held_out)
    return _export(results, budget, info, export, args.export_pareto, args.name, validation, args.keep_dominated)


def command_reference(argv: Sequence[str]) -> int:
    import optuna

    from .budget import parse_budget
    from .ship import reference_policy_name, tune_reference_policies

    args = build_reference_parser().parse_args(argv)
    workload = workload_from_args(args)
    metric = workload.editing_contract.budget_metric
    budgets = [
        with_memory_bound(parse_budget(text, args.worst, args.min_speedup, metric), args) for text in args.budget
    ]
    for budget in budgets:
        check_budget_bounds(budget)
        note_whole_frame_budget(budget, workload.editing_contract)
    check_output_folder(args.out, reuse=True, what="tuning folder", kind="tune")
    for budget in budgets:
        name = reference_policy_name(budget, workload.editing_contract)
        check_output_file(args.policies_dir / f"{name}.json", "--policies-dir")
    args.out.mkdir(parents=True, exist_ok=True)
    write_marker(args.out, "tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _config(args, budgets[0], workload, resume=True)
    held_out = None
    if args.validate_clips is not None:
        from .validate import held_out_workload

        held_out = held_out_workload(workload, args.validate_clips, "reference-policies")
    with quiet_interrupts():
        written = tune_reference_policies(budgets, config, args.policies_dir, held_out, args.keep_dominated)
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
