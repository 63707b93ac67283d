"""Demo-like data for the dashboard tests, made by the real tools in `make demo`'s layout (runs/demo/...).

profile/: `hetcache.profiler.profile_session` on the tiny random-weight reference workload (64x64, 9 frames, 3 steps,
one box clip). tune/: `hetcache-tune` on the same workload (a real Optuna SQLite study, policy.json, pareto/).
apply/: `hetcache.runner.run` with the tuned policy and the uncached comparison. Built once per test session.
Also a folder of broken inputs: empty, truncated and foreign files, a run with its videos missing, a bad policy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from hetcache.workloads.spec import ClipSource, Workload

STEPS = 3
LAYERS = [f"blocks.{i}" for i in range(6)] + ["vace_blocks.0", "vace_blocks.1"]  # the reference architecture
BUDGET = "psnr=49.5"  # random weights give ~47-51 dB when caching and 100 dB when not: feasible and infeasible
TRIALS = 8
WORKLOAD_FLAGS = ["--weights", "random", "--clips", "box", "--height", "64", "--width", "64", "--frames", "9"]
WORKLOAD_FLAGS += ["--steps", str(STEPS)]

_built: dict[str, Path] = {}


def tiny_workload() -> Workload:
    return Workload(
        weights="random", clips=(ClipSource("box", kind="box"),), height=64, width=64, num_frames=9, steps=STEPS
    )


def study_url(runs: Path) -> str:
    return f"sqlite:///{runs / 'demo' / 'tune' / 'study.db'}"


def load_demo_study(runs: Path) -> optuna.Study:
    url = study_url(runs)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def build_demo(base: Path) -> Path:
    """runs/demo/{profile,tune,apply} under `base` (profile → tune → apply); returns the runs folder."""
    from hetcache.profiler import profile_session
    from hetcache.tuner.cli import main as tune_main

    from hetcache.runner import run
    from hetcache.workloads.execute import LoadedWorkload

    demo = base / "runs" / "demo"
    profile_session(LoadedWorkload(tiny_workload()), margin_width=1, attention_every=1).save(demo / "profile")
    code = tune_main(
        [
            *WORKLOAD_FLAGS,
            *("--budget", BUDGET, "--min-speedup", "1.0", "--trials", str(TRIALS)),
            *("--out", str(demo / "tune"), "--profile", str(demo / "profile")),
            *("--export-pareto", str(demo / "tune" / "pareto")),
        ]
    )
    assert code == 0, "hetcache-tune found no feasible policy on the demo workload"
    run(tiny_workload(), policy=demo / "tune" / "policy.json", compare=True, out=demo / "apply")
    return base / "runs"


def build_broken(base: Path, demo_runs: Path) -> Path:
    """Broken inputs side by side: truncated and foreign files, runs without videos or comparison, a bad policy."""
    root = base / "broken"
    (root / "empty").mkdir(parents=True)
    (root / "bad-run").mkdir()
    (root / "bad-run" / "run.json").write_text('{"schema": "hetcache.run/v1", "clips": [', encoding="utf-8")
    (root / "bad-profile").mkdir()
    (root / "bad-profile" / "profile.json").write_text('{"schema": "hetcache.profile/v1", "lay', encoding="utf-8")
    shutil.copytree(demo_runs / "demo" / "profile", root / "no-tensors-profile")
    (root / "no-tensors-profile" / "tensors.safetensors").unlink()
    (root / "no-videos-run").mkdir()
    shutil.copy(demo_runs / "demo" / "apply" / "run.json", root / "no-videos-run" / "run.json")
    (root / "uncached-run").mkdir()
    record = json.loads((demo_runs / "demo" / "apply" / "run.json").read_text(encoding="utf-8"))
    record["policy"] = None
    record["clips"] = [
        {k: v for k, v in c.items() if k in ("clip", "notes", "uncached_denoise_s")} for c in record["clips"]
    ]
    (root / "uncached-run" / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (root / "bad.db").write_bytes(b"this is not a database\n")
    policy = json.loads((demo_runs / "demo" / "tune" / "policy.json").read_text(encoding="utf-8"))
    policy["tokens"]["margin_ratio"] = 2.0
    (root / "broken-policy.json").write_text(json.dumps(policy), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> Path:
    """The demo runs folder, built once per test session (shared by the dashboard test modules)."""
    if "demo" not in _built:
        _built["demo"] = build_demo(tmp_path_factory.mktemp("dashboard"))
    return _built["demo"]


@pytest.fixture(scope="session")
def broken_runs(demo_runs, tmp_path_factory) -> Path:
    if "broken" not in _built:
        _built["broken"] = build_broken(tmp_path_factory.mktemp("dashboard-broken"), demo_runs)
    return _built["broken"]


def test_demo_layout_is_what_the_dashboard_reads(demo_runs):
    demo = demo_runs / "demo"
    profile = json.loads((demo / "profile" / "profile.json").read_text(encoding="utf-8"))
    assert profile["schema"] == "hetcache.profile/v1" and [x["name"] for x in profile["layers"]] == LAYERS
    assert all(profile["clips"][0]["token_classes"].values())  # generative, margin and context tokens all present
    study = load_demo_study(demo_runs)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    assert len(complete) == TRIALS and 0 < len(feasible) < TRIALS
    assert {"policy", "speedup_flops", "quality", "quality_worst", "decisions"} <= set(complete[0].user_attrs)
    record = json.loads((demo / "apply" / "run.json").read_text(encoding="utf-8"))
    assert record["schema"] == "hetcache.run/v1" and record["policy"]["name"] == study.study_name + "-trial" + str(
        record["policy"]["provenance"]["trial"]
    )
    assert (demo / "apply" / "box.mp4").is_file() and (demo / "apply" / "box.uncached.mp4").is_file()


def test_the_dashboard_judges_a_study_as_the_tuner_does(demo_runs):
    from hetcache.dashboard import studies
    from hetcache.tuner.budget import budget_from_attrs
    from hetcache.tuner.results import best_feasible, pareto_front, trial_results

    from hetcache.policy import load_policy

    study = load_demo_study(demo_runs)
    judged = studies.verdicts(studies.load_study(study_url(demo_runs), study.study_name))
    results, budget = trial_results(study, "flops"), budget_from_attrs(study.user_attrs)
    exported = load_policy(demo_runs / "demo" / "tune" / "policy.json").provenance["trial"]
    assert judged.best.number == best_feasible(results, budget).number == exported
    feasible = [r for r in results if r.feasible(budget)]
    points = studies.front_points(study.trials, judged, budget.primary, "objective", budget.mode)
    assert [n for n, _, _ in points["Best Trial"]] == sorted(r.number for r in pareto_front(feasible, budget))
    assert {n for n, _, _ in points["Infeasible Trial"]} == {r.number for r in results if not r.feasible(budget)}


def test_one_reader_per_format_gives_one_message(broken_runs):
    from hetcache.dashboard.readers import DataError, load_profile
    from hetcache.profiler.store import Profile, read_profile_data
    from hetcache.tuner.profile_input import read_profile

    from hetcache.errors import InputError

    folder = broken_runs / "bad-profile"
    messages = set()
    for reader, error in ((read_profile_data, InputError), (Profile.load, InputError), (read_profile, InputError)):
        with pytest.raises(error) as info:
            reader(folder)
        messages.add(str(info.value))
    with pytest.raises(DataError) as info:
        load_profile(folder)
    messages.add(str(info.value))
    (message,) = messages
    assert "bad-profile/profile.json' is not valid JSON" in message
    with pytest.raises(DataError, match=r"has no tensors\.safetensors"):
        load_profile(broken_runs / "no-tensors-profile")
    assert read_profile(broken_runs / "no-tensors-profile").main_order  # the tuner needs profile.json only


def test_study_storages_open_read_only_without_creating_anything(tmp_path, broken_runs):
    from hetcache.dashboard import studies
    from hetcache.tuner.study_storage import open_storage

    from hetcache.errors import InputError

    for url, message in (
        (f"sqlite:///{tmp_path / 'missing.db'}", "does not exist"),
        (f"journal:///{tmp_path / 'missing.log'}", "does not exist"),
        (f"sqlite:///{broken_runs / 'bad.db'}", "is not an SQLite database"),
    ):
        with pytest.raises(InputError, match=message):
            open_storage(url, read_only=True)
        with pytest.raises(InputError, match=message):
            studies.study_names(url)
    assert not list(tmp_path.iterdir())
