"""Three hetcache-tune workers share one study; one is SIGKILLed in the middle of a trial.

On a real PostgreSQL server, a SQLite file and a journal file, on a quiet machine and with a busy core: afterwards
every trial is accounted for (unique numbers, no trial left running, no retry left waiting), the killed trial was
failed (heartbeat, or its process gone) and its point re-run by another worker before the workers stopped, and a
policy can be exported from any node. The PostgreSQL cases skip only where no server binaries are installed (CI
installs them).
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
import sqlalchemy
from hetcache.tuner.study_storage import open_storage
from pg import postgres_server, server_bin

from hetcache.errors import InputError
from hetcache.policy import load_policy

pytestmark = [pytest.mark.slow]
NO_SERVER = pytest.mark.skipif(server_bin() is None, reason="PostgreSQL server binaries (initdb) are not installed")

WORKLOAD = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "6"]
STUDY = "shared"
TRIALS = 10
STALL = 120  # seconds the study may go without a newly finished trial before the test gives up on its workers
PASSWORD = "sekret-pw"


@pytest.fixture
def postgres():
    """A fresh server per test, so that no test joins the study another one left behind."""
    with postgres_server() as base:
        yield base


@pytest.fixture
def busy_core(request):
    """A process spinning on one core for the test's length (`busy`), or nothing (`quiet`)."""
    if request.param == "quiet":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def storage_url(kind: str, request, tmp_path: Path) -> str:
    if kind == "postgresql":
        return f"postgresql+psycopg://optuna:{PASSWORD}@{request.getfixturevalue('postgres')}"
    return f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 'shared.log'}"


def start_worker(url: str, out: Path, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "hetcache.tuner", "--budget", "psnr=32", "--trials", str(TRIALS)]
    args += ["--storage", url, "--study-name", STUDY, "--join", "--heartbeat", "1", "--grace", "5"]
    args += [*WORKLOAD, "--clips", "box,moving", "--out", str(out), "--export", str(out / f"{log.stem}.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)


def load(url: str) -> optuna.Study:
    """The shared study, opened as every hetcache part opens storages (journal files included)."""
    return optuna.load_study(study_name=STUDY, storage=open_storage(url, read_only=True))


def peek(url: str) -> optuna.Study:
    """The study for a read that must not wait on a frozen worker's SQLite lock (it fails fast instead)."""
    if not url.startswith("sqlite"):
        return load(url)
    quick = {"connect_args": {"timeout": 0.2}}
    return optuna.load_study(study_name=STUDY, storage=optuna.storages.RDBStorage(url, engine_kwargs=quick))


def running_trial_of(study: optuna.Study, pid: int) -> int | None:
    """The trial `pid` is evaluating (its policy built, its clips being run), if any."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if str(trial.user_attrs.get("worker", "")).endswith(f":{pid}") and "policy" in trial.user_attrs:
            return trial.number
    return None


def kill_mid_trial(storage: str, victim: subprocess.Popen, deadline: float) -> int:
    """SIGKILL `victim` while one of its trials is RUNNING (frozen first, so the trial cannot finish meanwhile)."""
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the worker to kill exited early"
        try:
            study = load(storage)
        except (KeyError, InputError):  # not created yet
            time.sleep(0.2)
            continue
        if running_trial_of(study, victim.pid) is not None:
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                number = running_trial_of(peek(storage), victim.pid)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError):  # frozen mid-commit
                number = None
            if number is not None:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                return number
            os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never ran a trial")


def finished_trials(storage: str) -> int | None:
    """How many trials of the shared study have finished (None while it cannot be read: not created, or locked)."""
    try:
        return sum(t.state.is_finished() for t in peek(storage).get_trials(deepcopy=False))
    except (KeyError, InputError, optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError):
        return None


def wait_while_progressing(storage: str, workers: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait for `workers` to exit cleanly for as long as the study keeps finishing trials: no fixed deadline, which a
    loaded machine would miss, only one on a stall."""
    count, last = None, time.monotonic()
    while any(worker.poll() is None for worker in workers):
        now = finished_trials(storage)
        if now is not None and now != count:
            count, last = now, time.monotonic()
        if time.monotonic() - last > STALL:
            tails = "\n".join(log.read_text()[-2000:] for log in logs)
            raise AssertionError(f"no trial finished for {STALL} s ({count} finished); worker logs:\n{tails}")
        time.sleep(0.5)
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log.read_text()


@pytest.mark.parametrize(
    ("kind", "busy_core"),
    [
        pytest.param("postgresql", "quiet", marks=[NO_SERVER, pytest.mark.postgres]),
        pytest.param("postgresql", "busy", marks=[NO_SERVER, pytest.mark.postgres]),
        ("sqlite", "quiet"),
        ("journal", "busy"),
    ],
    indirect=["busy_core"],
)
def test_three_workers_share_a_study_and_survive_a_killed_one(kind, busy_core, request, tmp_path):
    storage = storage_url(kind, request, tmp_path)
    out = tmp_path / "run"
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [start_worker(storage, out, log) for log in logs]
    try:
        killed = kill_mid_trial(storage, workers[0], time.monotonic() + 240)
        wait_while_progressing(storage, workers[1:], logs[1:])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    study = load(storage)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # every trial accounted for, none duplicated
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 0
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert all(t.user_attrs.get("warm_start") and "failed_trial" not in t.system_attrs for t in waiting)
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
    if kind == "postgresql":
        assert "***" in policy.provenance["storage"] and PASSWORD not in exported.read_text()
    best = study.trials[policy.provenance["trial"]]
    assert best.state == optuna.trial.TrialState.COMPLETE and all(v <= 0 for v in best.constraints.values())


OPEN_AT_ONCE = """
import sys, time
from hetcache.tuner.study_storage import open_storage
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
open_storage(url)
"""


@NO_SERVER
@pytest.mark.postgres
def test_workers_opening_a_new_database_at_the_same_moment_all_get_it(postgres):
    """Four processes create Optuna's tables in one fresh database at the same instant: none fails."""
    url = f"postgresql+psycopg://optuna:{PASSWORD}@{postgres}"
    start = time.time() + 3
    opened = [
        subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(start)], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [process.communicate(timeout=120)[1] for process in opened]
    assert [process.returncode for process in opened] == [0, 0, 0, 0], errors
    assert optuna.get_all_study_summaries(open_storage(url, read_only=True)) == []
