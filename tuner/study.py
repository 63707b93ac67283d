"""Creating or joining a tuning study, and running one worker on it.

The first worker creates the study: it stores the budget, workload, model and search space in the study's user
attrs (docs/files.md, "Study storage") and enqueues the warm-start points. Other workers (other GPUs or machines,
or a later `--resume`) join it, check that they tune the same thing, and sample the stored space. Each worker runs
trials until the study holds `trials` finished ones; a trial whose worker died is failed (heartbeat, or its process
gone) and its point re-run before the workers stop (`recovery.py`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

from hetcache import __version__
from hetcache.atomic import write_marker
from hetcache.errors import InputError
from hetcache.fingerprint import model_fingerprint
from hetcache.metrics import regions
from hetcache.policy import WorkloadSpec, model_spec_from_fingerprint
from hetcache.workloads.spec import Workload, current_workload_dict

from . import interrupts
from .budget import MAX_CACHE_KEY, MEMORY_AT_KEY, Budget
from .export import StudyInfo
from .objective import OBJECTIVES, Evaluator, Objective
from .profile_input import ProfileHints, check_profile_workload, read_profile
from .recovery import pending_retries, reap_orphans, requeue_interrupted, watchable
from .references import FOLDER as REFERENCE_FOLDER
from .references import ReferenceStore, weights_signature
from .refine import Refiner, refine_trials
from .results import TrialResult, best_feasible, over_memory, trial_results
from .schedule import candidates, capture_tables, record
from .space import SearchSpace
from .study_storage import Heartbeat, check_storage, display_url, open_storage, reap_lock, resolve_url

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
JOIN_WAIT_S = 60.0
SPACE_RANGES_KEY = "space_ranges"  # study user attr: the --space ranges it was created with ({} for none)


@dataclass
class TuneConfig:
    """Everything one `hetcache-tune` worker needs."""

    workload: Workload
    budget: Budget
    out: Path
    objective: str = "flops"
    trials: int = 40
    timeout: float | None = None
    seed: int = 0
    study_name: str | None = None
    storage: str | None = None
    resume: bool = False
    profile: Path | None = None
    warm_start: bool = True
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    lpips_weights: Path | None = None
    progress: bool = False
    reference_dir: Path | None = None
    search: str = "tpe"  # "schedule": step plans from a one-pass step model, verified as trials (tuner/schedule.py)
    space_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # --space, by parameter

    def name(self) -> str:
        """The study name: given, or <workload>[-<contract>]-<budget> (the contract named unless it is none)."""
        contract = self.workload.editing_contract
        middle = "" if contract.is_none else f"-{contract.slug}"
        return self.study_name or f"{self.workload.name}{middle}-{self.budget.slug()}"


@dataclass
class TuneResult:
    """What a worker leaves behind: the study it worked on and every completed trial in it."""

    info: StudyInfo
    results: list[TrialResult]
    ran: int
    created: bool
    seconds: float
    over_memory: list[tuple[int, float]] = field(default_factory=list)  # trials not run: (number, cache GiB)
    pending: list[Pending] = field(default_factory=list)  # points left for a --resume


def _comparable_workload(data: dict[str, Any]) -> dict[str, Any]:
    """A workload dict in today's form without the fields that may differ between workers (the device)."""
    return {k: v for k, v in current_workload_dict(data).items() if k != "device"}


def _shown(value: Any) -> str:
    return "none" if value is None else repr(value)


def _workload_value(key: str, data: dict[str, Any]) -> str:
    """One field of a workload dict as a refusal shows it (clips by name; absent clips: the default ones)."""
    if key == "clips":
        clips = data.get("clips")
        return ",".join(str(c.get("name")) for c in clips if isinstance(c, dict)) if clips else "the default clips"
    return _shown(data.get(key))


def _check_same_study(attrs: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    """Refuse to join a study that tunes something else (another budget, objective, workload or model)."""
    checks = (
        ("budget", "--budget"),
        ("budget_mode", "--worst"),
        ("min_speedup", "--min-speedup"),
        ("objective", "--objective"),
        (MAX_CACHE_KEY, "--max-cache-gib"),
        (MEMORY_AT_KEY, "--memory-at"),
    )
    for key, flag in checks:
        if attrs.get(key) != expected.get(key):
            raise InputError(
                f"study '{name}' was tuned with {key} {_shown(attrs.get(key))}; this run asks for "
                f"{_shown(expected.get(key))}.",
                f"use the study's {flag} to resume it (or leave it out if the study has none), "
                "or choose another --study-name.",
            )
    theirs, mine = (attrs.get("workload") or {}).get("contract", "none"), expected["workload"].get("contract", "none")
    if theirs != mine:
        raise InputError(
            f"study '{name}' was tuned under editing contract {theirs}; this run asks for {mine}.",
            f"pass --contract {theirs} to resume it, or choose another --study-name.",
        )
    theirs, mine = _comparable_workload(attrs.get("workload") or {}), _comparable_workload(expected["workload"])
    differ = sorted(key for key in set(theirs) | set(mine) if theirs.get(key) != mine.get(key))
    if differ:
        shown = "; ".join(
            f"{key}: study {_workload_value(key, theirs)}, this run {_workload_value(key, mine)}" for key in differ
        )
        raise InputError(
            f"study '{name}' was tuned on another workload ({shown}).",
            "pass the same workload flags as the study's first worker, or choose another --study-name.",
        )
    if (attrs.get("model") or {}).get("fingerprint") != expected["model"]["fingerprint"]:
        raise InputError(f"study '{name}' was tuned for another model architecture.", "choose another --study-name.")
    theirs, mine = attrs.get(SPACE_RANGES_KEY) or {}, expected[SPACE_RANGES_KEY]
    differ = sorted(n for n in set(theirs) | set(mine) if list(theirs.get(n, [])) != list(mine.get(n, [])))
    if differ:
        shown = "; ".join(
            f"{n}: study {_range_text(theirs.get(n))}, this run {_range_text(mine.get(n))}" for n in differ
        )
        raise InputError(
            f"study '{name}' was tuned in another search space ({shown}).",
            "pass the study's --space flags to resume it (none for its own ranges), or choose another --study-name.",
        )
    if attrs.get("weights") not in (None, expected["weights"]):
        raise InputError(
            f"study '{name}' was tuned with other weights of this model (their signature differs).",
            "load the same weights on every worker, or start a new study (--study-name) for the new weights.",
        )


def _range_text(span: Any) -> str:
    return f"--space {span[0]:g}:{span[1]:g}" if span else "the default range"


def _check_budget_regions(budget: Budget, session: Any) -> None:
    """A budget on a region (mask, margin, background) needs that region on at least one clip."""
    for metric in budget.metrics:
        region = metric.split("_", 1)[1] if "_" in metric and metric.split("_", 1)[0] in ("psnr", "ssim") else None
        if region is None:
            continue
        if not any(bool(regions(clip.mask)[region].any()) for clip in session.clips):
            raise InputError(
                f"--budget bounds {metric}, but no calibration clip has a {region} region.",
                f"bound the whole-frame metric ({metric.split('_')[0]}) instead, or use clips with that region.",
            )


def _wait_for_attrs(study: optuna.Study, name: str) -> dict[str, Any]:
    """The user attrs of a study another worker is still setting up (it writes them right after creating it)."""
    deadline = time.monotonic() + JOIN_WAIT_S
    while True:
        attrs = study.user_attrs
        if "search_space" in attrs:
            return attrs
        if time.monotonic() > deadline:
            raise InputError(
                f"study '{name}' exists but was not set up by hetcache-tune (it has no search space).",
                "choose another --study-name.",
            )
        time.sleep(0.5)


def _sampler(seed: int, trials: int, salt: tuple[Any, ...] = ()) -> optuna.samplers.TPESampler:
    """Explicit seeded TPE (multivariate, constant liar for parallel workers); a joining worker salts its seed."""
    if salt:
        seed = int.from_bytes(hashlib.sha256(repr((seed, *salt)).encode()).digest()[:4], "little")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True, n_startup_trials=max(3, min(10, trials // 3))
        )


def open_study(
    config: TuneConfig, session: Any, hints: ProfileHints | None, storage: optuna.storages.BaseStorage, url: str
) -> tuple[optuna.Study, SearchSpace, bool]:
    """Create the study (with attrs and warm starts) or join it; returns the study, its space and whether it is new."""
    name = config.name()
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if exists and not config.resume:
        raise InputError(
            f"study '{name}' already exists in {display_url(url)}.",
            "pass --resume to continue it (or to join it as another worker), or choose another --study-name.",
        )
    fp = model_fingerprint(session.transformer)
    expected = {
        **config.budget.to_attrs(),
        "objective": config.objective,
        "workload": session.workload.to_dict(),
        "model": fp,
        "weights": weights_signature(session.transformer),
        SPACE_RANGES_KEY: {k: list(v) for k, v in config.space_ranges.items()},
    }
    created = False
    space = None
    if not exists:
        space = SearchSpace.for_session(session, hints, config.space_ranges)
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                directions=["maximize"],
                sampler=_sampler(config.seed, config.trials),
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            if not config.resume:  # another worker created it since `exists` was read: this run may not join
                raise InputError(
                    f"study '{name}' was created in {display_url(url)} by another worker while this one started.",
                    "pass --join to add this worker to it, or choose another --study-name.",
                ) from None
    if created:
        attrs = {
            **expected,
            "profile": str(config.profile) if config.profile else None,
            "tool": f"hetcache {__version__}",
            "seed": config.seed,
            "search": config.search,
            "clips": [clip.name for clip in session.clips],
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        if config.warm_start and config.search == "tpe":  # a schedule study enqueues its candidates instead
            for label, params in space.warm_starts(hints)[: config.trials]:  # --trials is the total
                study.enqueue_trial(params, user_attrs={"warm_start": label}, skip_if_exists=True)
        study.set_user_attr("search_space", space.to_dict())  # last: joining workers wait for it
        return study, space, True
    probe = optuna.load_study(study_name=name, storage=storage)
    attrs = _wait_for_attrs(probe, name)
    _check_same_study(attrs, expected, name)
    salt = (len(probe.trials), os.getpid())
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(config.seed, config.trials, salt))
    return study, SearchSpace.from_dict(attrs["search_space"]), False


def _best_text(study: optuna.Study, config: TuneConfig) -> str:
    best = best_feasible(trial_results(study, config.objective), config.budget)
    return f"{best.value:.2f}x (trial {best.number})" if best else "none yet"


@dataclass(frozen=True)
class Pending:
    """A point of the study no worker will run before this one stops: a queued retry, or a trial out of sight."""

    number: int
    reason: str


def pending_points(study: optuna.Study, heartbeat: bool) -> list[Pending]:
    """Retries still queued, and running trials whose worker this one could not watch (it would not see it die)."""
    trials = study.get_trials(deepcopy=False)
    out = [Pending(t.number, f"retry of trial {t.system_attrs['failed_trial']}") for t in pending_retries(trials)]
    out += [
        Pending(t.number, f"running on {t.user_attrs.get('worker', 'an unknown worker')}")
        for t in trials
        if t.state == optuna.trial.TrialState.RUNNING and not watchable(t, heartbeat)
    ]
    return out


def _failed_elsewhere(study: optuna.Study, trial_id: int | None) -> bool:
    """Whether the trial this worker was running is FAIL in the storage (a stale check elsewhere failed it)."""
    return trial_id is not None and study._storage.get_trial(trial_id).state == optuna.trial.TrialState.FAIL


def run_worker(
    study: optuna.Study,
    objective: Objective,
    config: TuneConfig,
    heartbeat: bool,
    lock=None,
    refiner: Refiner | None = None,
) -> int:
    """Run trials until the study holds `config.trials` finished ones (or `--timeout`); returns how many ran here.

    A schedule study's `refiner` enqueues neighbours of the measured front whenever no trial is queued.

    Before it counts, a worker fails the trials whose worker is gone and re-queues their points
    (`tuner/recovery.py`); it stops only once no retry is queued and no trial it can watch is in flight elsewhere,
    so a killed worker's trial is re-run, here or by another worker, before the study ends.
    """
    started = time.monotonic()
    ran = 0
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    bar = tqdm(
        total=config.trials,
        initial=min(done, config.trials),
        desc="trials",
        unit="trial",
        disable=not config.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        bar.set_postfix_str(f"best feasible {_best_text(study, config)}")
        while config.timeout is None or time.monotonic() - started < config.timeout:
            with interrupts.deferred():  # the storage's writes between trials finish before a Ctrl+C stops them
                reap_orphans(study, heartbeat, config.heartbeat.max_retry, lock)
                trials = study.get_trials(deepcopy=False)
            done = sum(t.state in FINISHED for t in trials)
            bar.n = min(done, config.trials)
            bar.refresh()
            if done >= config.trials and not pending_retries(trials):
                # queued warm starts wait for a later --resume with more --trials; trials in flight elsewhere
                # are waited for while this worker would see their worker die (and then run their retry)
                running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
                if not any(watchable(t, heartbeat) for t in running):
                    break
                time.sleep(min(1.0, config.heartbeat.interval))
                continue
            if refiner is not None and not any(t.state == optuna.trial.TrialState.WAITING for t in trials):
                with interrupts.deferred():  # it enqueues trials
                    refiner.round(study)
            try:
                with interrupts.deferred():  # so are Optuna's around a trial (the evaluation itself stops at once)
                    study.optimize(objective, n_trials=1, gc_after_trial=False)
            except ValueError:  # Optuna cannot tell a trial another worker already failed
                if not _failed_elsewhere(study, objective.last_trial):
                    raise
                number = study._storage.get_trial(objective.last_trial).number
                print(
                    f"hetcache-tune: trial {number} was failed by another worker (no heartbeat within --grace "
                    f"{config.heartbeat.grace} s) while it ran here; its point is re-queued. Continuing.",
                    file=sys.stderr,
                )
            ran += 1
            bar.set_postfix_str(f"best feasible {_best_text(study, config)}")
    except KeyboardInterrupt:
        with interrupts.deferred():
            trial = objective.current_trial
            number = requeue_interrupted(study, trial) if trial is not None else None
        raise interrupts.Interrupted(number) from None
    finally:
        bar.close()
    return ran


def tune(config: TuneConfig, session: Any = None) -> TuneResult:
    """Create or join the study, compute the references, and run this worker's trials."""
    from hetcache.workloads.execute import LoadedWorkload

    if config.objective not in OBJECTIVES:
        raise InputError(f"--objective {config.objective!r} is unknown.", f"use one of {', '.join(OBJECTIVES)}.")
    if config.trials < 1:
        raise InputError(f"--trials {config.trials} must be at least 1.", "e.g. --trials 40.")
    lpips = None
    if "lpips" in config.budget.metrics:
        if config.lpips_weights is None:
            raise InputError("--budget bounds lpips, but no LPIPS weights were given.", "pass --lpips-weights DIR.")
        from hetcache.lpips import load_lpips

        lpips = load_lpips(config.lpips_weights)
    started = time.monotonic()
    url = resolve_url(config.storage, config.out)
    check_storage(url)  # fail fast, before loading the model, and create nothing yet
    hints = read_profile(config.profile) if config.profile else None
    warning = check_profile_workload(hints, config.workload) if hints is not None else None
    if warning:
        print(f"hetcache-tune: warning: {warning}", file=sys.stderr)
    session = session if session is not None else LoadedWorkload(config.workload)
    _check_budget_regions(config.budget, session)
    fp = model_fingerprint(session.transformer)
    if hints is not None and hints.model_fingerprint not in (None, fp["fingerprint"]):
        raise InputError(
            f"profile '{config.profile}' was recorded on another model architecture than this workload's.",
            "profile this workload's model with hetcache-profile, or drop --profile.",
        )
    config.out.mkdir(parents=True, exist_ok=True)  # every check passed: the first writes
    write_marker(config.out, "tune")
    storage = open_storage(url, config.heartbeat)
    study, space, created = open_study(config, session, hints, storage, url)
    references = ReferenceStore(config.reference_dir or config.out / REFERENCE_FOLDER, session)
    refiner = None
    if config.search == "schedule":  # before the references: their runs record the step tables
        model, passes = capture_tables(session, references)
        quota = config.trials - refine_trials(config.trials)
        record(study, model, quota, passes)
        refiner = Refiner(model, space, config.budget, config.objective, config.trials, candidates(model, space), quota)
    for clip in session.clips:
        references.get(clip)
    for clip in session.clips:
        references.local_seconds(clip)
    evaluator = Evaluator(session, references, config.budget, config.objective, lpips)
    workload_spec = WorkloadSpec(**session.summary())
    objective = Objective(evaluator, space, model_spec_from_fingerprint(fp), workload_spec, config.name())
    heartbeat = isinstance(storage, optuna.storages.RDBStorage)
    ran = run_worker(study, objective, config, heartbeat, reap_lock(url), refiner)
    info = StudyInfo(config.name(), display_url(url), config.objective, dict(study.user_attrs))
    results = trial_results(study, config.objective)
    seconds = time.monotonic() - started
    return TuneResult(info, results, ran, created, seconds, over_memory(study), pending_points(study, heartbeat))


def load_results(storage: str, study_name: str) -> tuple[StudyInfo, list[TrialResult]]:
    """A study's info and completed trials, for export from any node."""
    url = resolve_url(storage, Path.cwd())
    backend = open_storage(url, read_only=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
        raise InputError(
            f"study '{study_name}' is not in {display_url(url)}.",
            f"pass one of: {', '.join(names) or '(no studies)'} as --study-name.",
        ) from None
    attrs = dict(study.user_attrs)
    objective = attrs.get("objective", "flops")
    return StudyInfo(study_name, display_url(url), objective, attrs), trial_results(study, objective)
