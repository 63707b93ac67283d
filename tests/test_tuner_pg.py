"""Three hetcache-tune workers share one study on a real PostgreSQL server; one is SIGKILLed in the middle of a trial.

Afterwards every trial is accounted for (unique numbers, no trial left running or waiting), the killed trial was
failed by the heartbeat check and re-run by another worker (RetryHeartbeatStaleTrialCallback), and a policy can be
exported from any node. Skipped only where no PostgreSQL server binaries are installed (CI installs them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from pg import postgres_server, server_bin

from hetcache.policy import load_policy

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(server_bin() is None, reason="PostgreSQL server binaries (initdb) are not installed"),
]

WORKLOAD = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "6"]
STUDY = "shared"
TRIALS = 14


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as base:
        yield base


def start_worker(url: str, out: Path, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "hetcache.tuner", "--budget", "psnr=32", "--trials", str(TRIALS)]
    args += ["--storage", url, "--study-name", STUDY, "--join", "--heartbeat", "1", "--grace", "5"]
    args += [*WORKLOAD, "--clips", "box,moving", "--out", str(out), "--export", str(out / f"{log.stem}.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)


def running_trial_of(study: optuna.Study, pid: int) -> int | None:
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if str(trial.user_attrs.get("worker", "")).endswith(f":{pid}"):
            return trial.number
    return None


def kill_mid_trial(storage: str, victim: subprocess.Popen, deadline: float) -> int:
    """SIGKILL `victim` while one of its trials is RUNNING (frozen first, so the trial cannot finish meanwhile)."""
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the worker to kill exited early"
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage)
        except KeyError:
            time.sleep(0.2)
            continue
        if running_trial_of(study, victim.pid) is not None:
            os.kill(victim.pid, signal.SIGSTOP)
            number = running_trial_of(study, victim.pid)
            if number is not None:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                return number
            os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never ran a trial")


def test_three_workers_share_a_study_and_survive_a_killed_one(postgres, tmp_path):
    password = "sekret-pw"
    storage = f"postgresql+psycopg://optuna:{password}@{postgres}"
    out = tmp_path / "run"
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [start_worker(storage, out, log) for log in logs]
    try:
        killed = kill_mid_trial(storage, workers[0], time.monotonic() + 240)
        for worker, log in zip(workers[1:], logs[1:], strict=True):
            assert worker.wait(timeout=400) == 0, log.read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # every trial accounted for, none duplicated
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 0
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert all(t.user_attrs.get("warm_start") for t in waiting)  # only queued warm starts wait for a --resume
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL] == [killed]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == trials[killed].params
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= TRIALS
    # each warm-start point ran exactly once (its retry apart), and the surviving workers shared the work
    started = [t for t in trials if t.state != optuna.trial.TrialState.WAITING]
    labels = [t.user_attrs.get("warm_start") for t in started if t.system_attrs.get("failed_trial") is None]
    ran = [label for label in labels if label]
    assert len(ran) == len(set(ran)) and {"balanced", "paper", "timestep-only"} <= set(ran)
    pids = {str(t.user_attrs["worker"]).rsplit(":", 1)[1] for t in complete}
    assert {str(workers[1].pid), str(workers[2].pid)} <= pids <= {str(w.pid) for w in workers}

    # export from "another node": only the storage URL and the study name
    exported = tmp_path / "exported.json"
    command = [sys.executable, "-m", "hetcache.tuner", "export", "--storage", storage, "--study-name", STUDY]
    result = subprocess.run(
        [*command, "--export", str(exported)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    policy = load_policy(exported)
    assert policy.provenance["study"] == STUDY and policy.provenance["budget"] == {"psnr": 32.0}
    assert "***" in policy.provenance["storage"] and password not in exported.read_text()
    best = study.trials[policy.provenance["trial"]]
    assert best.state == optuna.trial.TrialState.COMPLETE and all(v <= 0 for v in best.constraints.values())
