"""Trials whose worker is gone: found, failed, and their point re-queued once, so a study loses no trial.

A trial is orphaned when its worker died (SIGKILL, a lost machine) while it was RUNNING. Two checks find it:
- the storage's heartbeat (RDB storages: SQLite, PostgreSQL): no heartbeat for the grace period;
- the worker's process is gone (every storage, journal files included): the trial records its worker's boot id,
  pid and process start time, and a worker on the same machine (same boot) sees at once that no such process runs.
A failed trial's point is re-queued as a WAITING trial in Optuna's retry convention (`failed_trial`,
`retry_history` system attrs, as `RetryHeartbeatStaleTrialCallback` writes them), so every reader tells retries
from warm starts. Workers run pending retries before they stop (`tuner/study.py`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna

from hetcache.locks import file_lock

WORKER_ATTR = "worker"  # host:pid, shown by the dashboard
BOOT_ATTR = "worker_boot"  # the worker machine's boot id: pids compare only within one boot
START_ATTR = "worker_start"  # the worker process's start time (clock ticks since boot): a reused pid differs
IDENTITY_ATTRS = (WORKER_ATTR, BOOT_ATTR, START_ATTR)
RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of a live process from /proc (None when it is gone or a zombie, or /proc is absent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return None if fields[0] in ("Z", "X") else fields[19]


def worker_identity() -> dict[str, Any]:
    """This worker's user attrs on every trial it runs (the boot id and start time only where /proc has them)."""
    pid = os.getpid()
    return {WORKER_ATTR: f"{socket.gethostname()}:{pid}", BOOT_ATTR: _boot_id(), START_ATTR: _process_start(pid)}


def worker_gone(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's worker ran on this machine (same boot) and its process no longer runs."""
    boot, start = trial.user_attrs.get(BOOT_ATTR), trial.user_attrs.get(START_ATTR)
    if boot is None or start is None or boot != _boot_id():
        return False
    pid = int(str(trial.user_attrs.get(WORKER_ATTR, ":0")).rsplit(":", 1)[1])
    return _process_start(pid) != start


def watchable(trial: optuna.trial.FrozenTrial, heartbeat: bool) -> bool:
    """Whether this worker would notice if the running trial's worker died (heartbeat, or a process on this boot)."""
    return heartbeat or (trial.user_attrs.get(BOOT_ATTR) is not None and trial.user_attrs.get(BOOT_ATTR) == _boot_id())


def is_retry(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.system_attrs.get("failed_trial") is not None


def pending_retries(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Re-queued points of failed trials that no worker has run yet."""
    return [t for t in trials if t.state == WAITING and is_retry(t)]


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retry: int | None) -> bool:
    """Enqueue a failed trial's point again (at most `max_retry` times per original trial); returns whether it did.

    The retry keeps the trial's params and user attrs (its warm-start label among them) but not the dead worker's
    identity, so no check mistakes the retry for the dead trial while a new worker picks it up.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if max_retry is not None and len(history) > max_retry:
        return False
    system_attrs = {
        **trial.system_attrs,
        "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
        "retry_history": history,
    }
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in IDENTITY_ATTRS}
    study.add_trial(
        optuna.create_trial(
            state=WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
    return True


def fail_and_requeue(study: optuna.Study, trial_id: int, max_retry: int | None) -> bool:
    """Mark a trial FAIL and re-queue its point, unless another process finished it first."""
    try:
        if not study._storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    requeue(study, study._storage.get_trial(trial_id), max_retry)
    return True


def requeue_interrupted(study: optuna.Study, trial_id: int) -> int | None:
    """Re-queue the point of the trial this worker was running when Ctrl+C stopped it (Optuna has stored it as
    failed; one still RUNNING is failed here); returns its number, None when it had finished anyway."""
    storage = study._storage
    if storage.get_trial(trial_id).state == RUNNING:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
    trial = storage.get_trial(trial_id)
    if trial.state != optuna.trial.TrialState.FAIL:
        return None
    requeue(study, trial, None)  # not a retry the budget of --max-retry counts: nothing went wrong with the point
    return trial.number


def reap_orphans(study: optuna.Study, heartbeat: bool, max_retry: int | None, lock: Path | None = None) -> None:
    """Fail the running trials whose worker is gone and re-queue their points.

    heartbeat: the storage has one (Optuna's stale-trial check; its callback is `Requeue`); lock: the study file
    whose lock is held while checking, where two processes could both fail the same trial (journal files).
    """
    with file_lock(lock):
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(RUNNING,)):
            if worker_gone(trial):
                fail_and_requeue(study, trial._trial_id, max_retry)


class Requeue:
    """The heartbeat's stale-trial callback for RDB storages: the same re-queue as for a dead process."""

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        requeue(study, trial, self.max_retry)
