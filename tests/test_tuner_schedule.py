"""`hetcache-tune --search schedule` on the tiny random-weight reference workload: the step model's predicted errors
against measured ones, its dynamic programme against brute force, and its study against every step plan run.

Random weights still give step-reuse errors that tell plans apart (latent_rel_l2 1e-3 … 3e-2 here).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hetcache.tuner.budget import parse_budget
from hetcache.tuner.cli import main
from hetcache.tuner.objective import Evaluator
from hetcache.tuner.references import ReferenceStore
from hetcache.tuner.refine import better_moves, cheaper_moves, refine_trials, replanned, shift_moves, useful
from hetcache.tuner.results import best_feasible, trial_results
from hetcache.tuner.schedule import PLAN_ATTR, Candidate, candidates, capture_tables, forecast_acts, spread, trial_steps
from hetcache.tuner.space import SearchSpace
from hetcache.tuner.step_model import StepModel, best_plans, fit_first_span

from hetcache.fingerprint import model_fingerprint
from hetcache.metrics import latent_rel_l2
from hetcache.policy import Policy, WorkloadSpec, model_spec_from_fingerprint
from hetcache.steps import PARTIAL
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.spec import parse_clip_names, reference_workload

STEPS = 8
WORKLOAD = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "6"]
CLIPS = "box,moving"


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """One clip's uncached run with the step recorder on (it is also the clip's stored reference)."""
    workload = reference_workload(
        weights="random", height=64, width=64, num_frames=9, steps=STEPS, clips=parse_clip_names("box")
    )
    session = LoadedWorkload(workload)
    references = ReferenceStore(tmp_path_factory.mktemp("refs"), session)
    model, passes = capture_tables(session, references)
    return session, references, model, passes


def measured(session, references, plan: str, forecast: str) -> float:
    clip = session.clips[0]
    policy = Policy(name="plan").replace(forecast=forecast)
    generation, _ = session.generate_cached(clip, policy, plan=plan, decode=False, strict=False)
    return latent_rel_l2(references.get(clip).latents, generation.latents)


def test_capture_rides_on_the_reference_run_and_is_reused(captured, tmp_path):
    session, references, model, passes = captured
    assert passes == 0 and references.has(session.clips[0])  # the recorded run was stored as the reference
    assert model.steps == STEPS
    again, passes = capture_tables(session, references)  # on disk now: nothing runs
    assert passes == 0 and (again.tables[0].gram == model.tables[0].gram).all()
    fresh = ReferenceStore(tmp_path, session)
    fresh.store(session.clips[0], session.generate(session.clips[0]))
    _, passes = capture_tables(session, fresh)  # a reference without a table: one capture pass
    assert passes == 1


@pytest.mark.parametrize("forecast", ["none", "linear"])
def test_predicted_error_of_reuse_plans_matches_the_measured_one(captured, forecast):
    """Every single-REUSE plan and some longer spans: predicted latent_rel_l2 within 25 % of the measured one, and
    the same order (rank correlation ≥ 0.9)."""
    session, references, model, _ = captured
    plans = ["F" * j + "R" + "F" * (STEPS - j - 1) for j in range(1, STEPS - 1)]
    plans += ["F" * j + "R" * n + "F" * (STEPS - j - n) for j in (1, 3) for n in (2, 3)]
    predicted = [model.plan_error(plan, forecast == "linear") for plan in plans]
    actual = [measured(session, references, plan, forecast) for plan in plans]
    for plan, p, a in zip(plans, predicted, actual, strict=True):
        assert 0.75 < p / a < 1.25, (plan, p, a)
    ranks = [sorted(values).index(v) for values in (predicted, actual) for v in values]
    n = len(plans)
    d2 = sum((ranks[i] - ranks[n + i]) ** 2 for i in range(n))
    assert 1 - 6 * d2 / (n * (n * n - 1)) >= 0.9


def brute_force(model: StepModel, forecast: bool, warmup: int, final: int) -> dict[int, list[tuple[float, str]]]:
    """Every plan of F and R that keeps the first `warmup` and last `final` steps FULL, priced one by one."""
    free = range(warmup, STEPS - final)
    out: dict[int, list[tuple[float, str]]] = {}
    for letters in itertools.product("FR", repeat=len(free)):
        plan = "F" * warmup + "".join(letters) + "F" * final
        out.setdefault(plan.count("F"), []).append((model.plan_error(plan, forecast), plan))
    return {k: sorted(v) for k, v in sorted(out.items())}


@pytest.mark.parametrize(("forecast", "warmup", "final"), [(False, 1, 1), (True, 1, 1), (True, 2, 2)])
def test_the_dynamic_programme_finds_the_exhaustive_optimum(captured, forecast, warmup, final):
    model = captured[2]
    found = best_plans(model, forecast, warmup, final, keep=3)
    truth = brute_force(model, forecast, warmup, final)
    assert sorted(found) == sorted(truth)
    for k, plans in truth.items():
        assert [p for _, p in found[k]] == [p for _, p in plans[:3]], k
        assert [e for e, _ in found[k]] == pytest.approx([e for e, _ in plans[:3]])


def test_spread_and_forecast_rules():
    assert spread([2, 3, 4, 5, 6]) == [2, 6, 4, 3, 5]
    assert sorted(spread(list(range(11)))) == list(range(11))
    assert not forecast_acts("FRRRFF")  # every REUSE before the second computed step: nothing to extrapolate
    assert forecast_acts("FFRFFF") and forecast_acts("FRFRFF")


def test_candidates_cover_every_cost_level_before_any_twice(captured):
    """A short study verifies one plan per count of computed steps before a second for any: the better forecast
    setting's best, then the other's, then the runners-up, each as the dynamic programme ranks them."""
    session, _, model, _ = captured
    space = SearchSpace.for_session(session)
    found = candidates(model, space)
    counts = sorted({c.computed for c in found})
    assert counts == list(range(2, STEPS))  # every cost level but all-FULL (first and last step always computed)
    first = found[: len(counts)]
    assert sorted(c.computed for c in first) == counts and [c.rank for c in first] == [0] * len(counts)
    for k in counts:
        mine = [c for c in found if c.computed == k]
        assert [(c.rank, c.predicted) for c in mine] == sorted((c.rank, c.predicted) for c in mine)
        for c in mine:
            ranked = best_plans(model, c.forecast == "linear", space.warmup_steps[0], 1)[k]
            ranked = [(e, plan) for e, plan in ranked if c.forecast == "none" or forecast_acts(plan)]
            assert c.plan == ranked[c.rank][1] and c.predicted == pytest.approx(ranked[c.rank][0])
    assert len({(c.plan, c.forecast) for c in found}) == len(found)


def run_tune(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(args))
    return code, out.getvalue()


def every_step_plan(out: Path, budget: str):
    """The full objective where it can run: every F/R plan of the 6-step workload (first and last step FULL, with
    and without the forecast) run as a policy on the study's clips; returns the best feasible (speedup, quality)."""
    workload = reference_workload(
        weights="random", height=64, width=64, num_frames=9, steps=6, clips=parse_clip_names(CLIPS)
    )
    session = LoadedWorkload(workload)
    budget_ = parse_budget(budget, min_speedup=1.1)
    evaluator = Evaluator(session, ReferenceStore(out / "references", session), budget_, "flops")
    space = SearchSpace.for_session(session)
    model = model_spec_from_fingerprint(model_fingerprint(session.transformer))
    spec = WorkloadSpec(**session.summary())
    best = None
    for letters in itertools.product("FR", repeat=4):
        plan = "F" + "".join(letters) + "F"
        for forecast in ("none", "linear") if forecast_acts(plan) else ("none",):
            policy = space.policy(space.point(forecast=forecast), plan, model, spec).replace(rule="explicit", plan=plan)
            outcome = evaluator.evaluate(policy, prune=False)
            quality = budget_.aggregate(outcome.quality, outcome.quality_worst)["psnr"]
            if budget_.feasible({"psnr": quality}, outcome.speedup_flops):
                best = max(best or (0.0, 0.0), (round(outcome.speedup_flops, 9), quality))
    return best


def test_schedule_study_returns_the_best_policy_of_the_full_objective(tmp_path):
    """With a third of the step plans verified, the schedule study's best feasible policy is the one running every
    plan finds (the same speedup and quality), and no slower than a plain TPE study's over the whole space; its
    trials ran explicit plans and its summary counts their steps."""
    budget = "psnr=34"
    truth = every_step_plan(tmp_path / "all", budget)
    args = ["--budget", budget, "--trials", "9", "--search", "schedule", *WORKLOAD, "--clips", CLIPS]
    code, stdout = run_tune(*args, "--out", str(tmp_path / "run"))
    assert code == 0, stdout
    study = optuna.load_study(study_name="reference-psnr34", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    results = trial_results(study, "flops")
    assert len(results) == 9 and all(PLAN_ATTR in r.attrs for r in results)
    assert all(r.plan() == r.attrs[PLAN_ATTR] for r in results)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 9  # no refinement left queued
    refined = [r for r in results if r.attrs["warm_start"].startswith("refine ")]
    assert len(refined) == refine_trials(9) and all(r.number >= 9 - len(refined) for r in refined)
    assert any(PARTIAL in r.plan() for r in refined)  # refinement tries the PARTIAL steps the model cannot price
    budget_ = parse_budget(budget, min_speedup=1.1)
    for r in results:  # no candidate two steps dearer than a plan already measured to meet the budget
        if r.attrs["warm_start"].startswith("schedule "):
            met = [computed(q.plan()) for q in results if q.number < r.number - 1 and q.feasible(budget_)]
            assert computed(r.plan()) <= min(met, default=5) + 1, (r.number, r.plan(), met)
    best = best_feasible(results, budget_)
    if PARTIAL in best.plan():  # a refined plan beat every step plan
        assert best.value > truth[0] and best.aggregate(parse_budget(budget))["psnr"] >= 34
    else:
        assert (round(best.value, 9), best.aggregate(parse_budget(budget))["psnr"]) == pytest.approx(truth)
    code, _ = run_tune(
        "--budget", budget, "--trials", "16", *WORKLOAD, "--clips", CLIPS, "--out", str(tmp_path / "tpe")
    )
    tpe = optuna.load_study(study_name="reference-psnr34", storage=f"sqlite:///{tmp_path / 'tpe' / 'study.db'}")
    tpe_best = best_feasible(trial_results(tpe, "flops"), parse_budget(budget, min_speedup=1.1))
    assert code == 0 and best.value >= tpe_best.value  # the whole space sampled by TPE finds nothing faster
    count = trial_steps(results)
    assert f"denoising steps: {count.steps} run by {count.trials} evaluated trials" in stdout
    assert count.steps == 9 * 2 * 6 and count.computed < count.steps


def computed(plan: str) -> int:
    return len(plan) - plan.count("R")


def test_a_candidate_is_verified_only_while_it_can_matter():
    """Left out: a plan whose computed steps alone cost more than the least speedup allows, one computing two steps
    more than the cheapest plan measured to meet the budget, and a count's second plan away from that plan's count."""
    budget = parse_budget("psnr=30", min_speedup=1.25)  # at most 0.8 of the FLOPs: 16 of 20 steps
    plan = Candidate("F" * 16 + "R" * 3 + "F", "none", 17, 0, 0.0)
    assert not useful(plan, 20, budget, None)
    assert useful(Candidate("F" * 16 + "RRRR", "none", 16, 0, 0.0), 20, budget, None)
    six = Candidate("FRRRRFRRRRRRRFRRFRFF", "linear", 6, 0, 0.1)
    assert useful(six, 20, budget, None) and useful(six, 20, budget, 5) and not useful(six, 20, budget, 4)
    other = Candidate("FRRRRFRRRRRRRFRRFRFF", "none", 6, 0, 0.2, place=1)  # the count's second candidate
    assert useful(other, 20, budget, 7) and useful(other, 20, budget, 5) and not useful(other, 20, budget, 8)


def test_the_first_span_weight_is_fitted_to_measured_errors_and_plans_with_it(captured):
    """Errors measured as a model with the first spans weighed 0.4 (and a common scale) would predict them give
    back 0.4; fewer than four plans leave the weight at 1; the re-planned moves are that model's best plans at the
    feasible plan's count and one either side."""
    _, _, model, _ = captured
    truth = model.with_first_span(0.4)
    plans = ["FRRRFRFF", "FRFRRRFF", "FRRRRRFF", "FRFRFRFF", "FFRRFRRF", "FRRRRFRF"]
    measured = [(plan, True, 3.0 * truth.plan_error(plan, True)) for plan in plans]
    assert fit_first_span(model, measured) == pytest.approx(0.4)
    assert fit_first_span(model, measured[:3]) == 1.0
    assert truth.plan_error("FRRRFRFF", False) < model.plan_error("FRRRFRFF", False)  # the first span weighs less
    best = SimpleNamespace(attrs={PLAN_ATTR: "FRRRFRFF"})  # 4 computed steps
    moves = replanned(truth, best, 1, 1)
    assert [sum(letter != "R" for letter in m.plan) for m in moves][:4] == [4, 3, 5, 4]  # each count's best first
    assert {m.plan for m in moves} == {
        plan
        for k in (3, 4, 5)
        for forecast in (True, False)
        for _, plan in best_plans(truth, forecast, 1, 1, 2)[k]
        if not forecast or forecast_acts(plan)
    }


def test_refinement_moves_change_one_middle_step(captured):
    """Each neighbour differs from its plan in the middle only: one FULL made PARTIAL (cheaper), one REUSE made
    PARTIAL (better) or one computed step moved by one (same count); ranked by the model's predicted error."""
    _, _, model, _ = captured
    plan, warmup, final = "FFRFRRFF", 2, 1
    cheaper = cheaper_moves(plan, "linear", model, warmup, final)
    better = better_moves(plan, "none", model, warmup, final)
    shifts = shift_moves(plan, "none", model, warmup, final)
    assert sorted(m.plan for m in cheaper) == ["FFRFRRPF", "FFRPRRFF"]
    assert sorted(m.plan for m in better) == ["FFPFRRFF", "FFRFPRFF", "FFRFRPFF"]
    assert sorted(m.plan for m in shifts) == sorted({"FFFRRRFF", "FFRRFRFF", "FFRFRFRF"})
    assert [m.plan for m in cheaper_moves(plan, "linear", model, warmup, final, "R")] == [
        m.plan.replace("P", "R") for m in cheaper
    ]  # the FULL dropped instead, in the same order
    assert [m.plan for m in better_moves(plan, "none", model, warmup, final, "F")] == [
        m.plan.replace("P", "F") for m in better
    ]
    dropped = [model.plan_error(m.plan.replace("P", "R"), True) for m in cheaper]  # the FULL's loss as REUSE
    gained = [model.plan_error(m.plan.replace("P", "F"), False) for m in better]  # the REUSE computed in full
    moved = [model.plan_error(m.plan, False) for m in shifts]
    assert dropped == sorted(dropped) and gained == sorted(gained) and moved == sorted(moved)
