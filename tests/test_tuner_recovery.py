"""Orphaned trials: a dead worker's RUNNING trial is failed once and its point re-queued, in every storage kind."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from hetcache.tuner.recovery import (
    BOOT_ATTR,
    IDENTITY_ATTRS,
    START_ATTR,
    WORKER_ATTR,
    pending_retries,
    reap_orphans,
    worker_identity,
)
from hetcache.tuner.study import pending_points
from hetcache.tuner.study_storage import Heartbeat, open_storage, reap_lock


def dead_worker_identity() -> dict:
    """The identity a worker on this machine had before it was killed."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    finally:
        process.kill()
        process.wait()
    return {**worker_identity(), WORKER_ATTR: f"host:{process.pid}", START_ATTR: start}


def running_trial(study: optuna.Study, identity: dict) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("reuse_threshold", 0.0, 1.0)
    trial.suggest_categorical("forecast", ["none", "linear"])
    for name, value in identity.items():
        trial.set_user_attr(name, value)
    trial.set_user_attr("warm_start", "balanced")
    return trial


@pytest.fixture(params=["journal", "sqlite"])
def url(request, tmp_path):
    return f"{request.param}:///{tmp_path / ('study.log' if request.param == 'journal' else 'study.db')}"


def test_a_dead_workers_trial_is_failed_once_and_its_point_requeued(url):
    storage = open_storage(url, Heartbeat())
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize"])
    dead = running_trial(study, dead_worker_identity())
    alive = running_trial(study, worker_identity())
    for _ in range(2):  # a second worker's check finds nothing more to do
        reap_orphans(study, heartbeat=False, max_retry=2, lock=reap_lock(url))
    trials = study.get_trials()
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    (retry,) = pending_retries(trials)
    assert retry.system_attrs["failed_trial"] == dead.number and retry.system_attrs["retry_history"] == [dead.number]
    assert retry.params == trials[dead.number].params and retry.user_attrs == {"warm_start": "balanced"}
    assert [p.reason for p in pending_points(study, heartbeat=False)] == [f"retry of trial {dead.number}"]


def test_retries_stop_at_max_retry(tmp_path):
    url = f"journal:///{tmp_path / 'study.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), directions=["maximize"])
    first = running_trial(study, dead_worker_identity())
    reap_orphans(study, heartbeat=False, max_retry=1)
    (retry,) = pending_retries(study.get_trials())
    again = study.ask()  # the retry, picked up by a worker that dies as well
    assert again.number == retry.number
    for name, value in dead_worker_identity().items():
        again.set_user_attr(name, value)
    reap_orphans(study, heartbeat=False, max_retry=1)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.FAIL] and first.number == 0


def test_the_heartbeat_fails_a_silent_trial_of_another_machine(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, Heartbeat(interval=1, grace=2))
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize"])
    elsewhere = {**worker_identity(), BOOT_ATTR: "another-machine"}
    trial = running_trial(study, elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Optuna: heartbeats are meant for Study.optimize
        storage.record_heartbeat(trial._trial_id)
    assert [p.reason for p in pending_points(study, heartbeat=False)] == [f"running on {elsewhere[WORKER_ATTR]}"]
    reap_orphans(study, heartbeat=True, max_retry=2)
    assert study.get_trials()[trial.number].state == optuna.trial.TrialState.RUNNING  # within its grace period
    time.sleep(3)
    reap_orphans(study, heartbeat=True, max_retry=2)
    trials = study.get_trials()
    assert trials[trial.number].state == optuna.trial.TrialState.FAIL
    (retry,) = pending_retries(trials)
    assert not set(IDENTITY_ATTRS) & set(retry.user_attrs)
