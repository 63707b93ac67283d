"""Optuna studies written by hetcache-tune, read without writing to the storage (formats: CONTRACTS.md, Study).

Fronts and importances come from Optuna itself: for a speedup-vs-metric front the trials are copied into an in-memory
two-objective study, so that `study.best_trials` and `optuna.visualization.plot_pareto_front` do the work.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hetcache.errors import HetCacheError
from hetcache.metrics import METRICS
from hetcache.policy import Policy, load_policy

from .readers import DataError
from .sources import JOURNAL_SUFFIXES, SQLITE_SUFFIXES, storage_url_for

STUDY_FIX = "pass the storage URL hetcache-tune wrote to (--storage), e.g. sqlite:///runs/demo/tune/study.db."
SPEEDUPS = {"objective": "speedup (objective)", "speedup_flops": "speedup (FLOPs)", "speedup_time": "speedup (time)"}
QUALITY_KEYS = {"mean": "quality", "worst": "quality_worst"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sqlite_path(url: str) -> Path:
    """The database file of a sqlite:/// URL (relative to the working folder unless absolute)."""
    return Path(url[len("sqlite:///") :])


def _journal_path(url: str) -> Path:
    """journal:///abs/path, journal:////abs/path or journal:relative/path → the file."""
    rest = url[len("journal:") :]
    return Path("/" + rest.lstrip("/") if rest.startswith("/") else rest)


def _check_sqlite(path: Path) -> None:
    """Refuse a missing, non-SQLite or non-Optuna file before Optuna would create tables in it."""
    if not path.is_file():
        raise DataError(f"study database '{path}' does not exist.", STUDY_FIX)
    with path.open("rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        raise DataError(f"'{path}' is not an SQLite database (it may be corrupt or another kind of file).", STUDY_FIX)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise DataError(f"SQLite database '{path}' cannot be read ({exc}).", STUDY_FIX) from None
    if "studies" not in tables:
        raise DataError(f"SQLite database '{path}' holds no Optuna studies.", STUDY_FIX)


def normalise_url(storage: str) -> str:
    """A storage URL from a URL or, as hetcache-tune accepts, a path to a .db or journal (.log) file."""
    storage = storage.strip()
    if not storage or "://" in storage or storage.startswith("journal:"):
        return storage
    path = Path(storage).expanduser().resolve()
    return storage_url_for(path) if path.suffix in SQLITE_SUFFIXES + JOURNAL_SUFFIXES else storage


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url` (sqlite:///…, journal:<file>, a file path, or any RDB URL), opened read-only."""
    url = normalise_url(url)
    if not url:
        raise DataError("no study storage is selected.", STUDY_FIX)
    if url.startswith("journal:"):
        path = _journal_path(url)
        if not path.is_file():
            raise DataError(f"journal file '{path}' does not exist.", STUDY_FIX)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:
            raise DataError(f"journal file '{path}' cannot be read as an Optuna journal ({exc}).", STUDY_FIX) from None
    if url.startswith("sqlite:///"):
        _check_sqlite(_sqlite_path(url))
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception as exc:
        raise DataError(f"storage '{url}' cannot be opened ({type(exc).__name__}: {exc}).", STUDY_FIX) from None


def study_names(url: str) -> list[str]:
    """Names of the studies in a storage."""
    storage = open_storage(url)
    try:
        return sorted(optuna.get_all_study_names(storage))
    except Exception as exc:
        raise DataError(f"storage '{url}' cannot be listed ({type(exc).__name__}: {exc}).", STUDY_FIX) from None


def load_study(url: str, name: str) -> optuna.Study:
    """Load study `name` from `url`."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise DataError(f"storage '{url}' has no study '{name}'.", "pick one of the studies it lists.") from None


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule: feasible when every constraint value is ≤ 0."""
    return all(v <= 0.0 for v in trial.constraints.values())


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (strings such as "unavailable", NaN, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def speedup_of(trial: FrozenTrial, which: str) -> float | None:
    """The objective value (which="objective") or a recorded speedup user attribute."""
    if which == "objective":
        return _number(trial.value) if trial.state == TrialState.COMPLETE else None
    return _number(trial.user_attrs.get(which))


def quality_of(trial: FrozenTrial, metric: str, mode: str = "mean") -> float | None:
    """A trial's mean (or worst-clip) value of a quality metric, if numeric."""
    quality = trial.user_attrs.get(QUALITY_KEYS[mode]) or {}
    return _number(quality.get(metric)) if isinstance(quality, dict) else None


def quality_metrics(trials: list[FrozenTrial]) -> list[str]:
    """Metrics with a numeric mean value in at least one trial, in hetcache's METRICS order."""
    seen = {m for t in trials for m in METRICS if quality_of(t, m) is not None}
    return [m for m in METRICS if m in seen]


def trial_table(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial: state, speedups, feasibility, mean and worst quality, parameters."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "speedup": speedup_of(t, "objective"),
            "speedup_flops": _number(t.user_attrs.get("speedup_flops")),
            "speedup_time": _number(t.user_attrs.get("speedup_time")),
            "flops_fraction": _number(t.user_attrs.get("flops_fraction")),
            "feasible": is_feasible(t) if t.state == TrialState.COMPLETE else None,
            "violated": ", ".join(k for k, v in t.constraints.items() if v > 0),
        }
        for metric in METRICS:
            row[metric] = quality_of(t, metric)
            row[f"worst_{metric}"] = quality_of(t, metric, "worst")
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["pruned_at_clip"] = t.user_attrs.get("pruned_at_clip")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all") if not table.empty else table


def metric_front_study(
    trials: list[FrozenTrial], metric: str, speedup: str = "objective", mode: str = "mean"
) -> optuna.Study:
    """An in-memory study with objectives (speedup ↑, metric in its direction) and the trials' constraints.

    Trials without both values become FAIL placeholders, so trial numbers stay those of the real study.
    """
    direction = "maximize" if METRICS.get(metric, True) else "minimize"
    front = optuna.create_study(directions=["maximize", direction])
    for t in sorted(trials, key=lambda t: t.number):
        x, y = speedup_of(t, speedup), quality_of(t, metric, mode)
        if t.state != TrialState.COMPLETE or x is None or y is None:
            front.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
            continue
        attrs = {k: t.user_attrs[k] for k in ("speedup_flops", "speedup_time") if k in t.user_attrs}
        front.add_trial(
            optuna.trial.create_trial(
                values=[x, y],
                params=t.params,
                distributions=t.distributions,
                user_attrs=attrs,
                constraints=dict(t.constraints),
            )
        )
    return front


def budget_of(study: optuna.Study) -> dict[str, float]:
    """The quality budget the study was tuned under (metric → bound)."""
    budget = study.user_attrs.get("budget") or {}
    return {k: float(v) for k, v in budget.items() if _number(v) is not None} if isinstance(budget, dict) else {}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """Optuna's best trial, or None when the study has none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None


def trial_policy(trial: FrozenTrial) -> Policy:
    """The policy a trial evaluated (user attribute "policy"), validated."""
    data = trial.user_attrs.get("policy")
    if not isinstance(data, dict):
        raise DataError(f"trial {trial.number} has no recorded policy.", "pick a completed trial of hetcache-tune.")
    try:
        return load_policy(data)
    except HetCacheError as exc:
        raise DataError(f"trial {trial.number}'s policy is invalid: {exc.what}", exc.fix) from None
