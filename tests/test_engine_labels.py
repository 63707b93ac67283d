"""Labels say what ran: PARTIAL steps on which every block ran in full are FULL; a run ends on a FULL step."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import SOME, box_token_mask, denoise, model_inputs, tiny_vace_model

from hetcache import apply_hetcache
from hetcache.plan import StepRule, plan_from_changes, resolve_plan, step_changes
from hetcache.policy import Policy, load_policy
from hetcache.steps import FULL, PARTIAL, REUSE

pytestmark = pytest.mark.usefixtures("no_grad")

NO_PARTIAL = SOME.replace(partial_blocks=(), partial_vace_blocks=())
TIMES = (900.0, 800.0, 700.0, 600.0)


def test_partial_step_without_partial_blocks_is_full_and_warned_about_once():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    with pytest.warns(UserWarning, match="runs no block partially") as caught:
        handle = apply_hetcache(model, NO_PARTIAL, strict=False, plan="FPRP")
    assert len(caught) == 1 and "partial_blocks" in str(caught[0].message)
    reference = tiny_vace_model()
    apply_hetcache(reference, NO_PARTIAL, strict=False, plan="FFRF")
    outs, expected = denoise(model, inputs, TIMES), denoise(reference, inputs, TIMES)
    stats = handle.stats()
    assert stats["decisions"] == "FFRF"
    assert stats["decisions_by_context"] == {"cond": "FFRF"}
    assert stats["active_fraction"] == [1.0, 1.0, 0.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(outs, expected, strict=True))


def test_some_partial_blocks_keep_partial_labels_without_warning():
    model = tiny_vace_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = apply_hetcache(
            model, SOME.replace(partial_blocks=(), partial_vace_blocks=(1,)), strict=False, plan="FP"
        )
    denoise(model, model_inputs(box_token_mask(1, 3, 8, 8)), TIMES[:2])
    assert handle.stats()["decisions"] == "FP"


def test_plan_from_the_rule_is_labelled_as_run():
    model = tiny_vace_model()

    class Scheduler:
        timesteps = torch.tensor(TIMES)

    policy = NO_PARTIAL.replace(reuse_threshold=0.0, full_threshold=1e9, warmup_steps=1, final_full_steps=0)
    assert resolve_plan(model, Scheduler.timesteps, policy.step_plan) == "FPPF"
    handle = apply_hetcache(model, policy, strict=False, scheduler=Scheduler())
    denoise(model, model_inputs(box_token_mask(1, 3, 8, 8)), TIMES)
    assert handle.stats()["plan"] == handle.stats()["decisions"] == "FFFF"


def test_every_token_active_is_a_full_step():
    model = tiny_vace_model()
    everything = SOME.replace(margin_ratio=1.0, context_ratio=1.0)
    handle = apply_hetcache(model, everything, strict=False, plan="FP")
    denoise(model, model_inputs(box_token_mask(1, 3, 8, 8)), TIMES[:2])
    assert handle.stats()["decisions"] == "FF"


def test_rule_ends_on_a_full_step_whatever_final_full_steps_says():
    spec = Policy(name="p").replace(reuse_threshold=10.0, full_threshold=20.0, warmup_steps=1, final_full_steps=0)
    assert plan_from_changes([0.01] * 5, spec.step_plan) == "FRRRRF"
    spec2 = spec.replace(final_full_steps=2)
    assert plan_from_changes([0.01] * 5, spec2.step_plan) == "FRRRFF"
    rule = StepRule(spec.step_plan)  # unknown step count: no final step to place
    assert [rule.decide(s, None if s == 0 else 0.01) for s in range(4)] == [FULL, REUSE, REUSE, REUSE]


@pytest.mark.parametrize("steps", [4, 8, 20])
@pytest.mark.parametrize("name", ["reference-psnr30", "reference-psnr35"])
@pytest.mark.parametrize("final_full_steps", [None, 0])
def test_shipped_policy_ends_on_a_full_step(steps, name, final_full_steps):
    """As shipped, and with no final FULL step asked for: the last step is FULL whatever the step count."""
    from diffusers import WanVACETransformer3DModel

    from hetcache import reference

    policy = load_policy(name)
    if final_full_steps is not None:
        policy = policy.replace(final_full_steps=final_full_steps)
    transformer = WanVACETransformer3DModel.from_pretrained(str(reference.MODEL_DIR / "transformer"))
    scheduler = reference.scheduler()
    scheduler.set_timesteps(steps)
    plan = resolve_plan(transformer, scheduler.timesteps, policy.step_plan)
    assert len(plan) == steps and plan[-1] == FULL
    assert set(plan) <= {FULL, PARTIAL, REUSE}
    changes = step_changes(transformer, scheduler.timesteps)
    rule = StepRule(policy.step_plan, steps)  # the engine's step-by-step decisions: the same letters
    assert "".join(rule.decide(s, None if s == 0 else changes[s - 1]) for s in range(steps)) == plan


def test_step_by_step_decisions_equal_the_whole_plan():
    model = tiny_vace_model()
    times = (900.0, 850.0, 800.0, 780.0, 700.0, 690.0)
    policy = SOME.replace(reuse_threshold=0.25, full_threshold=0.5, warmup_steps=1, final_full_steps=0)
    expected = resolve_plan(model, torch.tensor(times), policy.step_plan)
    assert expected == "FPRPRF"  # changes .28 .24 .23 .23 .20 into steps 1-5; the last step is FULL
    handle = apply_hetcache(model, policy, strict=False, num_inference_steps=len(times))
    denoise(model, model_inputs(box_token_mask(1, 3, 8, 8)), times)
    assert handle.stats()["plan"] is None  # decided step by step: no scheduler
    assert handle.stats()["decisions"] == expected


def test_max_partial_run_bounds_the_partial_steps_between_full_steps():
    spec = Policy(name="p").replace(reuse_threshold=0.0, full_threshold=1e9, warmup_steps=1, final_full_steps=0)
    assert plan_from_changes([0.01] * 9, spec.step_plan) == "FPPPPPPPPF"  # off: one long PARTIAL run
    bounded = spec.replace(max_partial_run=3)
    assert plan_from_changes([0.01] * 9, bounded.step_plan) == "FPPPFPPPFF"
    reuse_between = bounded.replace(reuse_threshold=0.015)  # REUSE steps do not count towards the run
    assert plan_from_changes([0.01] * 9, reuse_between.step_plan) == "FRPRPRPRFF"
    rule = StepRule(bounded.step_plan)  # step by step (the engine's path): the same letters
    assert "".join(rule.decide(s, None if s == 0 else 0.01) for s in range(9)) == "FPPPFPPPF"
