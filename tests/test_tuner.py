"""hetcache-tune on the tiny random-weight reference workload: budgets, export, resume, seeds, profiles, errors.

Random weights still give caching errors that tell plans apart on this workload (PSNR ≈ 45–50 dB for plans that
reuse or run partial steps, 100 dB only for all-FULL plans), so the budgets below bind.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import optuna
import pytest
from hetcache.tuner.budget import parse_budget
from hetcache.tuner.cli import main
from hetcache.tuner.space import behaviour_key

from hetcache.errors import InputError
from hetcache.policy import LayerSpec, Policy, StepPlanSpec, TokenSpec, load_policy

WORKLOAD = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "6"]
CLIPS = ["--clips", "box,moving"]
BUDGET = 30.0
STUDY_ATTRS = {"budget", "budget_mode", "objective", "workload", "model", "profile", "tool"}
TRIAL_ATTRS = {"policy", "speedup_flops", "speedup_time", "flops_fraction", "quality", "quality_worst"}
TRIAL_ATTRS |= {"quality_per_clip", "decisions"}


def run_tune(*args: str) -> tuple[int, str, str]:
    """Run hetcache-tune in-process; returns exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def load_study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One small study: 12 trials under psnr ≥ 30 on two clips (a sampler seed whose trials both meet and miss it)."""
    out = tmp_path_factory.mktemp("tune") / "run"
    args = [
        "--budget", f"psnr={BUDGET}", "--trials", "12", "--sampler-seed", "0", *WORKLOAD, *CLIPS, "--out", str(out),
    ]  # fmt: skip
    code, stdout, stderr = run_tune(*args)
    return out, code, stdout, stderr


# -- budgets -----------------------------------------------------------------------------------------------


def test_budget_parsing_and_bounds():
    budget = parse_budget("psnr_mask=28, ssim=0.95,latent_rel_l2=0.05")
    assert budget.as_dict() == {"psnr_mask": 28.0, "ssim": 0.95, "latent_rel_l2": 0.05}
    assert budget.slug() == "psnr_mask28-ssim0.95-latent_rel_l20.05"
    # higher-is-better misses below the bound, lower-is-better above it
    assert budget.violation("psnr_mask", 27.0) == pytest.approx(1.0)
    assert budget.violation("latent_rel_l2", 0.04) == pytest.approx(-0.01)
    assert budget.feasible({"psnr_mask": 28.0, "ssim": 0.96, "latent_rel_l2": 0.05}, speedup=2.0)
    assert not budget.feasible({"psnr_mask": 28.0, "ssim": 0.96, "latent_rel_l2": 0.06}, speedup=2.0)
    assert not budget.feasible({"psnr_mask": 30.0, "ssim": 0.99, "latent_rel_l2": 0.0}, speedup=1.05)
    assert budget.violation("ssim", float("nan")) == float("inf")


def test_budget_proves_hopeless_clips_early():
    mean = parse_budget("psnr=80")
    # one clip at 40 dB, one left: even 100 dB (the cap) on it gives a mean of 70 < 80
    assert mean.hopeless([{"psnr": 40.0}], remaining=1) == {"psnr": pytest.approx(10.0)}
    assert parse_budget("psnr=60").hopeless([{"psnr": 40.0}], remaining=1) is None
    worst = parse_budget("psnr=45", worst=True)
    assert worst.hopeless([{"psnr": 50.0}, {"psnr": 40.0}], remaining=3) == {"psnr": pytest.approx(5.0)}
    assert worst.hopeless([{"psnr": 50.0}], remaining=3) is None
    lower = parse_budget("latent_rel_l2=0.01")
    assert lower.hopeless([{"latent_rel_l2": 0.05}], remaining=1) == {"latent_rel_l2": pytest.approx(0.015)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("psnr=abc", "'abc' is not a number"),
        ("psnrr=30", "unknown metric 'psnrr'"),
        ("", "--budget is empty"),
        ("psnr", "has no '='"),
        ("psnr=30,psnr=31", "metric 'psnr' twice"),
        ("psnr=30,", "empty bound"),
        ("ssim=nan", "not finite"),
    ],
)
def test_bad_budget_is_a_clear_error(tmp_path, text, message):
    code, _, stderr = run_tune("--budget", text, *WORKLOAD, "--out", str(tmp_path / "run"))
    assert code == 2
    assert message in stderr and "Fix:" in stderr
    assert not (tmp_path / "run").exists()


def test_storage_files_under_the_working_directory_are_shown_relative(tmp_path, monkeypatch):
    from hetcache.tuner.study_storage import display_url, resolve_url

    monkeypatch.chdir(tmp_path)
    assert display_url(resolve_url(None, Path("runs/tune"))) == "sqlite:///runs/tune/study.db"
    assert display_url(resolve_url("runs/t/study.log", Path("x"))) == "journal:///runs/t/study.log"
    outside = resolve_url(str(tmp_path.parent / "elsewhere.db"), Path("x"))
    assert display_url(outside) == outside


def test_unreachable_storage_is_a_clear_error(tmp_path):
    url = "postgresql+psycopg://tuner:sekret@127.0.0.1:1/hetcache"
    code, _, stderr = run_tune("--budget", "psnr=30", "--storage", url, *WORKLOAD, "--out", str(tmp_path / "run"))
    assert code == 2
    assert "cannot connect to the study storage 'postgresql+psycopg://tuner:***@127.0.0.1:1/hetcache'" in stderr
    assert "sekret" not in stderr
    code, _, stderr = run_tune("--budget", "psnr=30", "--storage", "mysql://u@127.0.0.1:1/db", *WORKLOAD)
    assert code == 2 and "needs the Python driver" in stderr
    code, _, stderr = run_tune("--budget", "psnr=30", "--storage", str(tmp_path / "study.txt"), *WORKLOAD)
    assert code == 2 and "neither a database URL nor a .db / .log file" in stderr


# -- tuning and export -------------------------------------------------------------------------------------


def test_exported_policy_meets_its_budget_when_run_again(tuned):
    from hetcache.runner import run_clips, summarise
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import workload_from_dict

    out, code, stdout, stderr = tuned
    assert code == 0, stderr
    assert "wrote" in stdout and "policy.json" in stdout
    policy = load_policy(out / "policy.json")
    prov = policy.provenance
    assert prov["source"] == "hetcache-tune" and prov["study"] == f"reference-psnr{BUDGET:g}"
    assert prov["budget"] == {"psnr": BUDGET} and prov["budget_mode"] == "mean"
    assert prov["storage"].startswith("sqlite:///") and prov["tool"].startswith("hetcache ")
    assert set(prov["quality_per_clip"]) == {"box", "moving"}
    assert {"psnr_mask", "ssim_background"} <= set(prov["quality_per_clip"]["box"])

    # the exported trial is the fastest one that meets the budget
    study = load_study(out, prov["study"])
    feasible = [
        t
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        if all(v <= 0 for v in t.constraints.values())
    ]
    assert feasible and max(t.value for t in feasible) == pytest.approx(prov["speedup_flops"])
    assert study.trials[prov["trial"]].value == pytest.approx(prov["speedup_flops"])
    assert any(t.constraints["psnr"] > 0 for t in study.trials if t.constraints), "the budget never bound"

    # run it again on the calibration clips: same speedup, budget met
    session = LoadedWorkload(workload_from_dict(study.user_attrs["workload"]))
    assert [clip.name for clip in session.clips] == ["box", "moving"]
    summary = summarise(run_clips(session, policy, compare=True))
    assert summary["speedup_flops"] == pytest.approx(prov["speedup_flops"], rel=1e-9)
    assert summary["speedup_flops"] >= 1.1
    assert summary["quality"]["psnr"] >= BUDGET
    assert summary["quality"]["psnr"] == pytest.approx(prov["quality"]["psnr"], abs=1e-3)
    assert policy.step_plan.plan == prov["decisions"]["box"]


def test_study_and_trial_attributes_follow_the_contract(tuned):
    out, _, _, _ = tuned
    study = load_study(out, f"reference-psnr{BUDGET:g}")
    assert set(study.user_attrs) >= STUDY_ATTRS
    assert study.user_attrs["budget"] == {"psnr": BUDGET} and study.user_attrs["objective"] == "flops"
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 12
    for trial in trials:
        assert set(trial.user_attrs) >= TRIAL_ATTRS, trial.number
        assert set(trial.constraints) == {"psnr", "min_speedup"}
        assert trial.user_attrs["speedup_flops"] == pytest.approx(1 / trial.user_attrs["flops_fraction"])
    labels = [t.user_attrs.get("warm_start") for t in trials[:3]]
    assert labels == ["paper", "timestep-only", "balanced"]
    assert trials[1].params["full_ratio"] == 1.0 and "P" not in trials[1].user_attrs["decisions"]["box"]


def test_export_command_and_pareto_ladder(tuned, tmp_path):
    out, _, _, _ = tuned
    name = f"reference-psnr{BUDGET:g}"
    code, _, stderr = run_tune(
        "export",
        "--storage",
        str(out / "study.db"),
        "--study-name",
        name,
        "--export",
        str(tmp_path / "p.json"),
        "--export-pareto",
        str(tmp_path / "ladder"),
    )
    assert code == 0, stderr
    best = load_policy(tmp_path / "p.json").provenance
    assert best["trial"] == load_policy(out / "policy.json").provenance["trial"]
    ladder = json.loads((tmp_path / "ladder" / "index.json").read_text())["ladder"]
    speeds = [rung["speedup"] for rung in ladder]
    quality = [rung["psnr"] for rung in ladder]
    assert speeds == sorted(speeds) and len(set(speeds)) == len(speeds)
    assert quality == sorted(quality, reverse=True) and len(set(quality)) == len(quality)
    fastest_feasible = max((rung for rung in ladder if rung["feasible"]), key=lambda rung: rung["speedup"])
    assert fastest_feasible["trial"] == best["trial"]
    for rung in ladder:
        assert load_policy(tmp_path / "ladder" / rung["file"]).provenance["trial"] == rung["trial"]
    # the front is at least as good as step reuse alone at every cost: it holds or beats every timestep-only trial
    study = load_study(out, name)
    steps_only = [t for t in study.trials if str(t.user_attrs.get("warm_start", "")).startswith("timestep-only")]
    assert len(steps_only) == 7  # the ladder and the forecast ladder
    for trial in steps_only:
        speed, psnr = trial.value, trial.user_attrs["quality"]["psnr"]
        assert any(rung["speedup"] >= speed and rung["psnr"] >= psnr for rung in ladder), trial.number
    # another budget, read from the same study
    code, _, _ = run_tune("export", "--storage", str(out / "study.db"), "--study-name", name, "--budget", "psnr=99")
    assert code == 3


def test_the_pareto_front_holds_or_beats_every_timestep_only_plan(tmp_path):
    """Timestep-only plans are in the space and seed every study: the exported front is at least as good as step
    reuse alone at every cost, also when the budget (every clip ≥ 35 dB) rules most of them out on the first clip."""
    out = tmp_path / "run"
    code, _, stderr = run_tune(
        "--budget", "psnr=35", "--worst", "--trials", "8", *WORKLOAD, *CLIPS, "--out", str(out),
        "--export-pareto", str(out / "pareto"),
    )  # fmt: skip
    assert code in (0, 3), stderr
    study = load_study(out, "reference-psnr35-worst")
    ladder = json.loads((out / "pareto" / "index.json").read_text())["ladder"]
    steps_only = [t for t in study.trials if str(t.user_attrs.get("warm_start", "")).startswith("timestep-only")]
    assert len(steps_only) == 5  # the ladder and its forecast twin
    assert any(t.user_attrs["quality_worst"]["psnr"] < 35 for t in steps_only), "the budget never bound"
    front = {rung["trial"]: rung for rung in ladder}
    for trial in steps_only:
        speed, psnr = trial.value, trial.user_attrs["quality_worst"]["psnr"]
        assert set(trial.user_attrs["quality_per_clip"]) == {"box", "moving"}, trial.number  # scored fully
        on_front = trial.number in front or trial.user_attrs.get("same_as") in front
        assert on_front or any(r["speedup"] >= speed and r["psnr"] >= psnr for r in ladder), trial.number


def test_impossible_budget_fails_cleanly_with_the_closest_trial(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = run_tune("--budget", "psnr=100", "--trials", "2", *WORKLOAD, *CLIPS, "--out", str(out))
    assert code == 3
    assert "no trial of study 'reference-psnr100'" in stderr and "the closest is trial" in stderr
    assert "No policy was written" in stderr
    assert not (out / "policy.json").exists()
    assert not list(out.glob("*.json"))
    trials = load_study(out, "reference-psnr100").trials
    assert len(trials) == 2  # --trials is the total: only the first warm starts are enqueued
    # warm starts anchor the Pareto front: scored on every clip even when the first proves the budget out of reach
    assert [t.user_attrs["warm_start"] for t in trials] == ["paper", "timestep-only"]
    assert all(set(t.user_attrs["quality_per_clip"]) == {"box", "moving"} for t in trials)
    assert all("pruned_at_clip" not in t.user_attrs for t in trials) and trials[1].constraints["psnr"] > 0
    # sampled trials stop at the first clip that proves the budget out of reach
    code, _, _ = run_tune("--budget", "psnr=100", "--trials", "4", *WORKLOAD, *CLIPS, "--out", str(out), "--resume")
    assert code == 3
    stopped = [t for t in load_study(out, "reference-psnr100").trials[2:] if "pruned_at_clip" in t.user_attrs]
    assert stopped and all(t.user_attrs["pruned_at_clip"] == "box" for t in stopped)
    assert all(set(t.user_attrs["quality_per_clip"]) == {"box"} for t in stopped)
    assert all(t.constraints["psnr"] > 0 for t in stopped)


def test_resume_continues_the_study(tuned, tmp_path):
    source, _, _, _ = tuned
    out = tmp_path / "run"
    shutil.copytree(source, out)
    name = f"reference-psnr{BUDGET:g}"
    before = {t.number: t.params for t in load_study(out, name).trials}
    args = ["--budget", f"psnr={BUDGET}", *WORKLOAD, *CLIPS, "--out", str(out)]
    code, _, stderr = run_tune(*args, "--trials", "14")
    assert code == 2 and "already exists" in stderr and "--resume" in stderr
    code, _, stderr = run_tune(*args[2:], "--budget", "psnr=40", "--study-name", name, "--trials", "14", "--resume")
    assert code == 2 and "was tuned with budget" in stderr
    code, stdout, stderr = run_tune(*args, "--trials", "14", "--resume")
    assert code == 0, stderr
    assert "2 run by this worker" in stdout
    trials = load_study(out, name).trials
    assert [t.number for t in trials] == list(range(14))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {n: trials[n].params for n in before} == before
    assert len(list((out / "references").glob("*/*.npz"))) == 2  # references reused, not recomputed


def test_same_seed_gives_the_same_first_trials(tmp_path):
    def first_params(folder: str, seed: str) -> list[dict]:
        out = tmp_path / folder
        code, _, stderr = run_tune(
            "--budget", "psnr=30", "--min-speedup", "1.0", "--trials", "2", "--no-warm-start", "--sampler-seed", seed,
            *WORKLOAD,
            "--clips", "box", "--out", str(out),
        )  # fmt: skip
        assert code == 0, stderr
        return [t.params for t in load_study(out, "reference-psnr30").trials]

    first = first_params("a", "7")
    assert len(first) == 2
    assert first_params("b", "7") == first
    assert first_params("c", "8") != first


def test_identical_behaviour_shares_a_key():
    def policy(reuse: float, context: float, clusters: int) -> Policy:
        return Policy(
            name="p",
            step_plan=StepPlanSpec(reuse_threshold=reuse, full_threshold=2 * reuse),
            tokens=TokenSpec(context_ratio=context, selection="kmeans", clusters=clusters),
            layers=LayerSpec(partial_blocks=(0, 1)),
        )

    # thresholds matter only through the plan; token settings only when the plan has PARTIAL steps
    assert behaviour_key(policy(0.1, 0.1, 4), "FRRF") == behaviour_key(policy(0.2, 0.3, 8), "FRRF")
    assert behaviour_key(policy(0.1, 0.1, 4), "FPRF") != behaviour_key(policy(0.1, 0.3, 4), "FPRF")
    assert behaviour_key(policy(0.1, 0.1, 4), "FPRF") != behaviour_key(policy(0.1, 0.1, 8), "FPRF")
    assert behaviour_key(policy(0.1, 0.0, 4), "FPRF") == behaviour_key(policy(0.1, 0.0, 8), "FPRF")


# -- the search space --------------------------------------------------------------------------------------


def small_space(**changes):
    from hetcache.tuner.space import SearchSpace

    values = dict(
        steps=8,
        reuse_threshold=(0.01, 0.3),
        warmup_steps=(1, 2),
        final_full_steps=(0, 2),
        margin_width=(0, 4),
        main_order=(3, 1, 5, 4, 2, 0),
        vace_order=(0, 1),
        polynomial=None,
        layer_order_source="prefix",
        step_changes=(0.1, 0.05, 0.2, 0.02, 0.3, 0.04, 0.15),
    )
    return SearchSpace(**{**values, **changes})


def test_the_search_space_is_one_table_of_parameters():
    from hetcache.tuner.space import PARAM_NAMES, PARAMS, paper_params

    from hetcache.policy import WorkloadSpec, field_value

    space = small_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = space.suggest(study.ask())
    assert tuple(sampled) == PARAM_NAMES
    assert tuple(space.clamp(sampled)) == PARAM_NAMES and tuple(paper_params(6)) != ()
    assert set(paper_params(6)) == set(PARAM_NAMES)
    for label, point in space.warm_starts():
        assert tuple(point) == PARAM_NAMES, label
        policy = space.policy(point, label, None, WorkloadSpec(steps=8))
        for param in PARAMS:
            if param.field is not None:
                assert field_value(policy, param.field) == point[param.name], (label, param.name)
    far = space.clamp({**sampled, "reuse_threshold": 9.0, "margin_width": 99, "selection": "nope", "clusters": 1})
    assert (far["reuse_threshold"], far["margin_width"], far["selection"], far["clusters"]) == (0.3, 4, "stride", 2)
    assert not small_space(vace_order=()).clamp({**sampled, "partial_vace": True})["partial_vace"]


@pytest.mark.parametrize(("contract", "trims"), [(None, False), ("none", False), ("paste", True), ("blend", True)])
def test_the_discard_trim_is_on_under_a_contract_that_discards_and_not_searched(contract, trims):
    from hetcache.tuner.space import PARAM_NAMES

    from hetcache.policy import WorkloadSpec

    space = small_space()
    point = space.warm_starts()[0][1]
    policy = space.policy(point, "p", None, WorkloadSpec(steps=8, contract=contract))
    assert policy.tokens.trim_discarded is trims and "trim_discarded" not in PARAM_NAMES
    assert ("trim" in behaviour_key(policy, "FRRF").split(";")) is trims


def test_a_trial_whose_policy_has_no_partial_block_never_has_p_in_its_plan():
    from hetcache.plan import plan_from_changes
    from hetcache.policy import WorkloadSpec

    space = small_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {"none": 0, "some": 0}
    for number in range(300):
        params = space.suggest(study.ask())
        if number % 2:  # half the points without a partial block, whatever the other values
            params = {**params, "partial_blocks": 0, "partial_vace": False}
        policy = space.policy(params, "t", None, WorkloadSpec(steps=8))
        plan = plan_from_changes(list(space.step_changes), policy.step_plan)
        if policy.layers.has_partial_block:
            seen["some"] += "P" in plan
        else:
            seen["none"] += 1
            assert "P" not in plan, (params, plan)
            assert policy.step_plan.full_threshold == policy.step_plan.reuse_threshold
    assert seen["none"] >= 150 and seen["some"] > 0  # P steps do occur where a block runs partial


def test_tuned_trials_without_a_partial_block_plan_no_partial_step(tuned):
    out, code, _, stderr = tuned
    assert code == 0, stderr
    trials = [t for t in load_study(out, "reference-psnr30").trials if "policy" in t.user_attrs]
    assert trials
    for trial in trials:
        layers = trial.user_attrs["policy"]["layers"]
        if not layers["partial_blocks"] and not layers["partial_vace_blocks"]:
            assert all("P" not in plan for plan in trial.user_attrs["decisions"].values()), trial.number


# -- profiles ----------------------------------------------------------------------------------------------


def write_profile(folder: Path, fingerprint: str, context_drift: list[float], polynomial: list[float]) -> Path:
    """A profile.json with the fields the tuner reads (format: docs/files.md)."""
    layers = [
        {"name": f"blocks.{i}", "kind": "main", "index": i, "drift": {"context": d, "generative": 1.0}}
        for i, d in enumerate(context_drift)
    ] + [{"name": f"vace_blocks.{i}", "kind": "vace", "index": i, "drift": {"context": 0.1}} for i in range(2)]
    data = {
        "schema": "hetcache.profile/v1",
        "model": {"fingerprint": fingerprint},
        "step_curve": {"polynomial": polynomial, "degree": len(polynomial) - 1},
        "layers": layers,
        "headroom": {"least_drifting_layers": ["blocks.3", "blocks.1", "vace_blocks.0"]},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.json").write_text(json.dumps(data))
    return folder


def test_profile_orders_layers_and_rescales_the_step_curve(tmp_path):
    from hetcache.tuner.profile_input import read_profile
    from hetcache.tuner.space import SearchSpace

    from hetcache.fingerprint import model_fingerprint
    from hetcache.policy import WorkloadSpec, model_spec_from_fingerprint
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import ClipSource, Workload

    session = LoadedWorkload(
        Workload(weights="random", height=64, width=64, num_frames=9, steps=6, clips=(ClipSource("box", "box"),))
    )
    fp = model_fingerprint(session.transformer)["fingerprint"]
    hints = read_profile(write_profile(tmp_path / "p", fp, [0.5, 0.1, 0.4, 0.05, 0.3, 0.2], [2.0, 0.0]))
    plain, profiled = SearchSpace.for_session(session), SearchSpace.for_session(session, hints)
    assert plain.main_order == (0, 1, 2, 3, 4, 5) and profiled.main_order == (3, 1, 5, 4, 2, 0)
    assert profiled.polynomial == (2.0, 0.0) and plain.polynomial is None
    assert profiled.step_changes == pytest.approx([2 * c for c in plain.step_changes], rel=1e-4)
    starts = dict(profiled.warm_starts(hints))
    ladder = {"timestep-only", "timestep-only@0.5x", "timestep-only@1x", "timestep-only@2.5x", "timestep-only-forecast"}
    ladder |= {"timestep-only-forecast@2.5x", "timestep-only-forecast@4x"}
    token_level = {"balanced", "balanced-refreshed", "profile-quiet-blocks", "profile-all-blocks-attention"}
    assert set(starts) == {"paper"} | token_level | ladder
    assert starts["timestep-only-forecast"]["forecast"] == "linear" and starts["timestep-only"]["forecast"] == "none"
    assert starts["balanced-refreshed"]["refresh_skipped_kv"] and starts["balanced-refreshed"]["partial_blocks"] == 6
    assert all(starts[label]["partial_blocks"] == 0 and not starts[label]["partial_vace"] for label in ladder)
    assert starts["paper"]["partial_blocks"] == 4  # blocks 0-19 of 30 → 4 of 6
    assert not starts["paper"]["partial_vace"]
    quiet = profiled.policy(
        starts["profile-quiet-blocks"],
        "q",
        model_spec_from_fingerprint(model_fingerprint(session.transformer)),
        WorkloadSpec(**session.workload.summary()),
    )
    assert quiet.layers.partial_blocks == (1, 3) and quiet.layers.partial_vace_blocks == ()
    assert quiet.step_plan.polynomial == (2.0, 0.0)

    code, _, stderr = run_tune(
        "--budget", "psnr=30", "--profile", str(write_profile(tmp_path / "other", "sha256:0", [0.1] * 6, [1.0, 0.0])),
        *WORKLOAD, "--clips", "box", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 2 and "another model architecture" in stderr
    with pytest.raises(InputError, match=r"holds no profile\.json"):
        read_profile(tmp_path / "missing")


def test_tuning_reads_a_profile_written_by_the_profiler(tmp_path):
    from hetcache.profiler.cli import main as profile_main

    profile = tmp_path / "profile"
    with contextlib.redirect_stdout(io.StringIO()):
        assert profile_main([*WORKLOAD, "--clips", "box", "--margin-width", "0", "--out", str(profile)]) == 0
    data = json.loads((profile / "profile.json").read_text())
    out = tmp_path / "run"
    code, _, stderr = run_tune(
        "--budget", "psnr=30", "--trials", "2", "--no-warm-start", "--profile", str(profile), *WORKLOAD,
        "--clips", "box", "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    study = load_study(out, "reference-psnr30")
    space = study.user_attrs["search_space"]
    assert study.user_attrs["profile"] == str(profile)
    assert space["polynomial"] == pytest.approx(data["step_curve"]["polynomial"])
    assert space["layer_order_source"].startswith("profile")
    main_layers = [la for la in data["layers"] if la["kind"] == "main"]
    drift = [la["drift"]["context"] for la in sorted(main_layers, key=lambda la: la["index"])]
    assert [drift[i] for i in space["main_order"]] == sorted(drift)
    assert load_policy(out / "policy.json").step_plan.polynomial == pytest.approx(data["step_curve"]["polynomial"])


def test_time_objective_maximises_measured_wall_clock(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = run_tune(
        "--budget", "psnr=30", "--objective", "time", "--min-speedup", "0.01", "--trials", "2", "--no-warm-start",
        *WORKLOAD, "--clips", "box", "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    study = load_study(out, "reference-psnr30")
    assert study.user_attrs["objective"] == "time"
    for trial in study.trials:
        assert trial.value == trial.user_attrs["speedup_time"] > 0
        assert trial.constraints["min_speedup"] == pytest.approx(0.01 - trial.user_attrs["speedup_time"])
    assert load_policy(out / "policy.json").provenance["objective"] == "time"


def test_reference_policies_command_writes_one_policy_per_met_budget(tmp_path):
    policies = tmp_path / "policies"
    code, stdout, stderr = run_tune(
        "reference-policies", "--budget", "psnr=30", "--budget", "psnr=100", "--trials", "2", "--no-warm-start",
        *WORKLOAD, "--clips", "box", "--out", str(tmp_path / "run"), "--policies-dir", str(policies),
    )  # fmt: skip
    assert code == 3  # psnr=100 needs an uncached run: no policy for it
    assert "no trial of study 'reference-psnr100'" in stderr
    assert sorted(p.name for p in policies.iterdir()) == ["reference-psnr30.json"]
    assert f"wrote {policies / 'reference-psnr30.json'}" in stdout
    policy = load_policy(policies / "reference-psnr30.json")
    assert policy.name == "reference-psnr30" and policy.provenance["source"] == "hetcache-tune"
    assert policy.provenance["budget"] == {"psnr": 30.0} and policy.provenance["quality"]["psnr"] >= 30.0
    assert "reference workload" in policy.description
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert sorted(names) == ["reference-psnr100", "reference-psnr30"]
    assert len(list((tmp_path / "run" / "references").glob("*/*.npz"))) == 1  # one reference, shared


def test_weights_signature_tells_retrained_weights_apart():
    from conftest import tiny_vace_model
    from hetcache.tuner.references import weights_signature

    assert weights_signature(tiny_vace_model(0)) == weights_signature(tiny_vace_model(0))
    assert weights_signature(tiny_vace_model(0)) != weights_signature(tiny_vace_model(1))
