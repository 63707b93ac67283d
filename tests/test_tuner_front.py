"""The tuner's front: search-space bounds from the data (--space, the bound warning) and held-out validation at export.

On the tiny random-weight reference workload (64², 9 frames, 6 steps); the numbers are the tiny model's.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import optuna
import pytest
from hetcache.tuner.cli import main
from hetcache.tuner.space import SearchSpace

from hetcache.policy import load_policy

WORKLOAD = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "6"]
CLIPS = ["--clips", "box,moving"]


def run_tune(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def load(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("nope=1:2", "'nope' is not a numeric parameter"),
        ("selection=1:2", "'selection' is not a numeric parameter"),
        ("full_ratio=4:2", "LOW must be below HIGH"),
        ("full_ratio=2:2", "LOW must be below HIGH"),
        ("margin_ratio=0:2", "margin_ratio must lie in [0, 1]"),
        ("reuse_threshold=0:1", "LOW must be > 0"),
        ("warmup_steps=1.5:3", "whole numbers"),
        ("full_ratio=a:b", "LOW:HIGH numbers"),
    ],
)
def test_bad_space_is_one_clear_line_before_compute(tmp_path, flag, message):
    code, _, stderr = run_tune("--budget", "psnr=30", "--space", flag, *WORKLOAD, "--out", str(tmp_path / "r"))
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "r").exists()  # nothing written


def test_the_reuse_range_reaches_the_all_middle_reuse_plan():
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import parse_clip_names, reference_workload

    workload = reference_workload(weights="random", height=64, width=64, num_frames=9, steps=6)
    space = SearchSpace.for_session(LoadedWorkload(workload.replace(clips=parse_clip_names("box"))))
    point = space.point(reuse_threshold=space.reuse_threshold[1], warmup_steps=1, final_full_steps=0)
    policy = space.policy(point, "p", None, None)
    from hetcache.plan import resolve_plan

    session = LoadedWorkload(workload.replace(clips=parse_clip_names("box")))
    assert resolve_plan(session.transformer, session.timesteps(), policy.step_plan) == "FRRRRF"
    assert space.caps("reuse_threshold") == (True, False)  # its top reuses everything: no cap


def test_best_point_on_a_bound_warns_and_the_widened_space_gets_past_it(tmp_path):
    """A reuse-threshold range capped below the step changes' sum: every warm start is clamped to its top, the best
    point sits there and the study warns with the flag to widen it; the default (data-derived) range gets past it."""
    capped = ["--space", "reuse_threshold=0.2:0.3"]  # below every step change of the tiny model (≈ 0.6)
    common = ["--budget", "psnr=30", "--trials", "6", *WORKLOAD, *CLIPS]  # above the all-PARTIAL warm start
    code, stdout, stderr = run_tune(*common, *capped, "--out", str(tmp_path / "capped"))
    assert code == 0, stderr
    assert "warning: the best point" in stderr and "reuse_threshold at its high bound" in stderr, stderr
    assert "--space reuse_threshold=0.2:" in stderr
    assert "Pareto front" in stdout and "reuse_threshold high" in stdout
    capped_best = load_policy(tmp_path / "capped" / "policy.json").provenance
    # the study remembers its space: resuming without the flag is refused, naming the parameter
    code, _, stderr = run_tune(*common, "--out", str(tmp_path / "capped"), "--resume")
    assert code == 2 and "reuse_threshold" in stderr and "--space" in stderr, stderr

    code, stdout, stderr = run_tune(*common, "--out", str(tmp_path / "wide"))
    assert code == 0, stderr
    assert "reuse_threshold at its" not in stderr, stderr
    wide = load_policy(tmp_path / "wide" / "policy.json")
    assert wide.provenance["speedup_flops"] > capped_best["speedup_flops"]
    assert wide.step_plan.reuse_threshold > 0.3
    attrs = load(tmp_path / "wide", "reference-psnr30").user_attrs
    assert attrs["space_ranges"] == {} and load(tmp_path / "capped", "reference-psnr30").user_attrs["space_ranges"] == {
        "reuse_threshold": [0.2, 0.3]
    }


def test_export_validation_drops_a_point_dominated_on_held_out_clips(tmp_path):
    """A real SQLite study on clip `box`, plus one fixed trial: the plain step-reuse policy of the `timestep-only`
    warm start, recorded with a calibration score that ranks it on the front (as noise on few calibration clips
    does). On held-out clips the forecast twin of its plan (same FLOPs) beats it: export drops it, or flags it."""
    out = tmp_path / "run"
    code, _, stderr = run_tune("--budget", "psnr=10", "--trials", "8", *WORKLOAD, "--clips", "box", "--out", str(out))
    assert code == 0, stderr
    study = load(out, "reference-psnr10")
    by_label = {t.user_attrs.get("warm_start"): t for t in study.trials}
    plain, forecast = by_label["timestep-only"], by_label["timestep-only-forecast"]
    assert plain.user_attrs["decisions"] == forecast.user_attrs["decisions"]  # the same plan: the same FLOPs
    lucky = {**plain.user_attrs, "quality": {**plain.user_attrs["quality"], "psnr": 60.0}, "warm_start": "fixed"}
    lucky["speedup_flops"] = plain.user_attrs["speedup_flops"] * 0.99  # just slower, so it stands on the front
    fixed = optuna.trial.create_trial(
        params=plain.params, distributions=plain.distributions, value=lucky["speedup_flops"], user_attrs=lucky
    )
    study.add_trial(fixed)
    fixed_number = len(study.trials) - 1
    storage = str(out / "study.db")
    base = ["export", "--storage", storage, "--study-name", "reference-psnr10"]

    code, _, stderr = run_tune(*base, "--validate-clips", "box", "--export", str(tmp_path / "x.json"))
    assert code == 2 and "not held out" in stderr and not (tmp_path / "x.json").exists(), stderr

    code, stdout, stderr = run_tune(
        *base, "--validate-clips", "box-7,small_box-7", "--export", str(tmp_path / "p.json"),
        "--export-pareto", str(tmp_path / "ladder"),
    )  # fmt: skip
    assert code == 0, stderr
    assert "editing contract none" in stdout, stdout
    dropped = re.search(rf"^\s*{fixed_number}\s.*dropped: dominated by trial (\d+)", stdout, re.MULTILINE)
    assert dropped is not None, stdout  # by its forecast twin, or by another point as cheap and better held out
    dominator = int(dropped.group(1))
    ladder = json.loads((tmp_path / "ladder" / "index.json").read_text())["ladder"]
    assert fixed_number not in {rung["trial"] for rung in ladder}
    assert dominator in {rung["trial"] for rung in ladder}
    provenance = load_policy(tmp_path / "p.json").provenance
    held, calibration = provenance["held_out_quality"], provenance["calibration_quality"]
    assert held["clips"] == ["box-7", "small_box-7"] and held["contract"] == "none" and held["metric"] == "psnr"
    assert calibration["clips"] == ["box"] and calibration["value"] == provenance["quality"]["psnr"]
    assert held["value"] != calibration["value"]  # measured on other clips

    code, stdout, _ = run_tune(
        *base, "--validate-clips", "box-7,small_box-7", "--keep-dominated", "--export-pareto", str(tmp_path / "all"),
    )  # fmt: skip
    assert code == 0 and "flagged: dominated by trial" in stdout
    kept = json.loads((tmp_path / "all" / "index.json").read_text())["ladder"]
    flagged = next(rung for rung in kept if rung["trial"] == fixed_number)
    assert flagged["held_out"]["dominated_by_trial"] == dominator
    by_trial = {rung["trial"]: rung["held_out"] for rung in kept}
    assert by_trial[dominator]["flops_fraction"] <= flagged["held_out"]["flops_fraction"]
