"""hetcache-tune --max-cache-gib: the memory plan sizes each trial's policy before it runs; only policies within the
bound are run, exported and placed on the Pareto front (tiny random-weight reference workload, SQLite studies)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import optuna
import pytest
from hetcache.tuner.budget import MemoryBound, budget_from_attrs
from hetcache.tuner.cli import miss_label
from hetcache.tuner.results import trial_results
from test_tuner import CLIPS, WORKLOAD, load_study, run_tune

from hetcache.memory import session_cache_gib
from hetcache.policy import load_policy

MAX_GIB = 0.0003  # above a timestep-only policy's buffers on this workload, below any token-level policy's caches
NAME = "reference-psnr30"


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """A study of 8 trials under psnr ≥ 30 and at most MAX_GIB of hetcache device memory, with a Pareto ladder."""
    out = tmp_path_factory.mktemp("memory") / "run"
    code, stdout, stderr = run_tune(
        "--budget", "psnr=30", "--max-cache-gib", str(MAX_GIB), "--trials", "8", *WORKLOAD, *CLIPS,
        "--out", str(out), "--export-pareto", str(out / "pareto"),
    )  # fmt: skip
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def session():
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import workload_from_dict

    def load(out, name=NAME):
        return LoadedWorkload(workload_from_dict(load_study(out, name).user_attrs["workload"]))

    return load


def test_only_policies_within_the_bound_run_and_are_exported(bounded, session):
    out, stdout = bounded
    study = load_study(out, NAME)
    assert study.user_attrs["max_cache_gib"] == MAX_GIB and study.user_attrs["memory_at"] is None
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 8
    skipped = [t for t in trials if t.user_attrs.get("over_memory")]
    ran = [t for t in trials if not t.user_attrs.get("over_memory")]
    assert skipped and ran, "the bound must exclude some policies and admit others"
    # the token-level warm starts cache every block: they cannot fit, so they were not run
    assert {"paper", "balanced"} <= {t.user_attrs.get("warm_start") for t in skipped}
    for trial in skipped:  # infeasible with the constraint it misses, and nothing measured
        assert trial.constraints == {"max_cache_gib": pytest.approx(trial.user_attrs["cache_gib"] - MAX_GIB)}
        assert trial.constraints["max_cache_gib"] > 0 and "quality" not in trial.user_attrs
    for trial in ran:
        assert trial.user_attrs["cache_gib"] <= MAX_GIB
        assert trial.constraints["max_cache_gib"] == pytest.approx(trial.user_attrs["cache_gib"] - MAX_GIB)
        assert {"psnr", "min_speedup"} <= set(trial.constraints)
    assert f"{len(skipped)} more trials were not run: their policy misses max cache {MAX_GIB:g} GiB" in stdout

    # the exported policy fits the bound when the memory plan sizes it again, and is the fastest feasible trial
    policy = load_policy(out / "policy.json")
    prov = policy.provenance
    assert prov["max_cache_gib"] == MAX_GIB
    assert session_cache_gib(policy, session(out)) == pytest.approx(prov["cache_gib"]) and prov["cache_gib"] <= MAX_GIB
    feasible = [t for t in ran if all(v <= 0 for v in t.constraints.values())]
    fastest = max(feasible, key=lambda t: (t.value, t.user_attrs["quality"]["psnr"], -t.number))  # ties: better
    assert prov["trial"] == fastest.number
    ladder = json.loads((out / "pareto" / "index.json").read_text())["ladder"]
    assert ladder and all(rung["cache_gib"] <= MAX_GIB for rung in ladder)
    assert {rung["trial"] for rung in ladder} <= {t.number for t in ran}


def test_a_tighter_bound_at_export_names_the_missed_constraint(bounded, tmp_path):
    out, _ = bounded
    results = trial_results(load_study(out, NAME), "flops")
    tight = MemoryBound(min(r.cache_gib for r in results) / 2)
    budget = budget_from_attrs(load_study(out, NAME).user_attrs)
    assert budget.memory == MemoryBound(MAX_GIB)
    tighter = dataclasses.replace(budget, memory=tight)
    assert f"max cache {tight.max_gib:g} GiB" in miss_label(results[0], tighter)
    assert all(not r.feasible(tighter) for r in results)
    code, _, stderr = run_tune(
        "export", "--storage", str(out / "study.db"), "--study-name", NAME, "--max-cache-gib", f"{tight.max_gib:g}",
        "--export", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert code == 3 and f"cache ≤ {tight.max_gib:g} GiB at the workload size" in stderr
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-cache-gib", "0"], "argument --max-cache-gib: must be a number > 0, got 0"),
        (["--max-cache-gib", "lots"], "argument --max-cache-gib: must be a number, got 'lots'"),
        (["--max-cache-gib", "8", "--memory-at", "720x1280"], "must be HEIGHTxWIDTHxFRAMES"),
        (["--max-cache-gib", "8", "--memory-at", "720x1280x80"], "must be 4k+1"),
        (["--max-cache-gib", "8", "--memory-at", "720x1270x81"], "multiple of 16 pixels"),
        (["--memory-at", "720x1280x81"], "no --max-cache-gib was given"),
    ],
)
def test_bad_memory_flags_are_refused_before_anything_runs(tmp_path, flags, message):
    code, _, stderr = run_tune("--budget", "psnr=30", *flags, *WORKLOAD, "--out", str(tmp_path / "run"))
    assert code == 2 and message in stderr
    assert not (tmp_path / "run").exists()


def test_resume_with_another_bound_is_refused(bounded, tmp_path):
    source, _ = bounded
    out = tmp_path / "run"
    shutil.copytree(source, out)
    args = ["--budget", "psnr=30", "--trials", "9", *WORKLOAD, *CLIPS, "--out", str(out), "--resume"]
    for flags, asked in (
        (["--max-cache-gib", "0.001"], "0.001"),
        ([], "none"),
        (["--max-cache-gib", str(MAX_GIB), "--memory-at", "128x128x17"], "[128, 128, 17]"),
    ):
        code, _, stderr = run_tune(*args, *flags)
        assert code == 2, flags
        key = "memory_at" if "--memory-at" in flags else "max_cache_gib"
        assert f"was tuned with {key}" in stderr and f"this run asks for {asked}" in stderr, stderr
    assert len(load_study(out, NAME).trials) == 8  # nothing ran
    code, _, stderr = run_tune(*args, "--max-cache-gib", str(MAX_GIB))
    assert code == 0, stderr
    assert len(load_study(out, NAME).trials) == 9


def test_memory_at_measures_the_bound_at_the_target_size(bounded, session, tmp_path):
    out, _ = bounded
    loaded = session(out)
    caching = next(t for t in load_study(out, NAME).trials if t.user_attrs.get("warm_start") == "balanced")
    policy = load_policy(caching.user_attrs["policy"])
    at_workload = session_cache_gib(policy, loaded)
    # at the workload's own size the scaled masks are the clips' masks: the same figure as the workload's plan
    assert MemoryBound(1.0, (64, 64, 9)).cache_gib(policy, loaded) == pytest.approx(at_workload, rel=1e-12)
    # 128x128x17 holds 4x the tokens per frame and 5 latent frames instead of 3 (6.7x the tokens)
    assert MemoryBound(1.0, (128, 128, 17)).cache_gib(policy, loaded) > 4 * at_workload  # prompt K/V stays

    target = tmp_path / "target"
    code, _, stderr = run_tune(
        "--budget", "psnr=1", "--min-speedup", "0.5", "--max-cache-gib", "10", "--memory-at", "128x128x17",
        "--trials", "1", "--no-warm-start", *WORKLOAD, "--clips", "box", "--out", str(target),
    )  # fmt: skip
    assert code == 0, stderr
    study = load_study(target, "reference-psnr1")
    assert study.user_attrs["memory_at"] == [128, 128, 17]
    exported = load_policy(target / "policy.json")
    assert exported.provenance["memory_at"] == [128, 128, 17]
    expected = MemoryBound(10, (128, 128, 17)).cache_gib(exported, session(target, "reference-psnr1"))
    assert study.trials[0].user_attrs["cache_gib"] == pytest.approx(expected, rel=1e-12)
