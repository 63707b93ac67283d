"""Engine behaviour: contexts, batches, hand-made masks, step plans, selection, FLOPs accounting."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import SOME, box_token_mask, denoise, forward, model_inputs, tiny_vace_model
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hetcache import apply_hetcache, remove_hetcache
from hetcache.cost import CostModel
from hetcache.errors import FingerprintMismatchError, UnsupportedModelError
from hetcache.fingerprint import model_fingerprint
from hetcache.plan import plan_from_changes, relative_l1_changes, resolve_plan, timestep_modulation
from hetcache.policy import Policy, StepPlanSpec, model_spec_from_fingerprint

pytestmark = pytest.mark.usefixtures("no_grad")


TIMES = (900.0, 800.0, 700.0, 600.0, 500.0)


def test_cond_and_uncond_states_never_mix():
    mask = box_token_mask(1, 3, 8, 8)
    cond = model_inputs(mask, seed=0)
    uncond = {**cond, "encoder_hidden_states": torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(9))}
    separate = {}
    for name, inputs in (("cond", cond), ("uncond", uncond)):
        model = tiny_vace_model()
        apply_hetcache(model, SOME, strict=False, plan="FPRPP")
        separate[name] = denoise(model, inputs, TIMES, context=name)
    model = tiny_vace_model()
    handle = apply_hetcache(model, SOME, strict=False, plan="FPRPP")
    interleaved = {"cond": [], "uncond": []}
    for t in TIMES:
        for name, inputs in (("cond", cond), ("uncond", uncond)):
            with model.cache_context(name):
                interleaved[name].append(forward(model, inputs, t))
    for name in ("cond", "uncond"):
        for a, b in zip(separate[name], interleaved[name], strict=True):
            assert torch.equal(a, b)
    assert handle.stats()["decisions_by_context"] == {"cond": "FPRPP", "uncond": "FPRPP"}


def test_batch_of_two_clips_with_different_masks_shares_the_union_of_active_tokens():
    masks = torch.cat([box_token_mask(1, 3, 8, 8, (0, 3, 0, 3)), box_token_mask(1, 3, 8, 8, (5, 8, 5, 8))])
    inputs = model_inputs(masks)
    model = tiny_vace_model()
    everything = SOME.replace(margin_ratio=1.0, context_ratio=1.0)
    plain = forward(model, inputs, 500.0)
    apply_hetcache(model, everything, strict=False, plan="FP")
    assert torch.equal(denoise(model, inputs, (600.0, 500.0))[1], plain)
    remove_hetcache(model)
    handle = apply_hetcache(model, SOME.replace(margin_width=0, context_ratio=0.0), strict=False, plan="FP")
    denoise(model, inputs, (600.0, 500.0))
    stats = handle.stats()
    assert stats["token_classes"]["generative"] == [27, 27]
    assert stats["active_fraction"][1] == pytest.approx(54 / 192)


@pytest.mark.parametrize(
    ("name", "region", "expect_partial"),
    [
        ("empty", None, False),
        ("full", (0, 8, 0, 8), False),
        ("one token", (3, 4, 3, 4), True),
        ("border", (0, 8, 0, 2), True),
    ],
)
def test_hand_made_masks(name, region, expect_partial):
    mask = torch.zeros(1, 3, 8, 8, dtype=torch.bool) if region is None else box_token_mask(1, 3, 8, 8, region)
    model = tiny_vace_model()
    handle = apply_hetcache(model, SOME, strict=False, plan="FPRP")
    outs = denoise(model, model_inputs(mask), TIMES[:4])
    stats = handle.stats()
    assert all(torch.isfinite(o).all() for o in outs)
    assert stats["decisions"] == ("FPRP" if expect_partial else "FFRF")
    assert "R" in stats["decisions"]
    if not expect_partial:
        assert stats["notes"] and ("empty mask" in stats["notes"][0] or "full mask" in stats["notes"][0])
    else:
        assert stats["active_fraction"][1] < 1.0


def test_moving_mask_and_zero_margin():
    mask = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    for frame in range(3):
        mask[0, frame, 2 * frame : 2 * frame + 2, 2 * frame : 2 * frame + 2] = True
    model = tiny_vace_model()
    handle = apply_hetcache(
        model, SOME.replace(margin_width=0, margin_ratio=1.0, context_ratio=0.0), strict=False, plan="FP"
    )
    denoise(model, model_inputs(mask), TIMES[:2])
    stats = handle.stats()
    assert stats["token_classes"] == {"generative": [12], "margin": [0], "context": [180]}
    assert stats["active_fraction"][1] == pytest.approx(12 / 192)


def test_reuse_step_returns_input_plus_last_residual():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    apply_hetcache(model, SOME, strict=False, plan="FR")
    full, reused = denoise(model, inputs, (500.0, 499.999))
    # the same input and practically the same timestep: the reused output matches a computed one closely
    assert (reused - full).abs().max().item() < 1e-3 * full.abs().max().item()


@contextlib.contextmanager
def counted():
    """FlopCounterMode with attention on the math kernel (the fused CPU kernel is not counted by torch)."""
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        yield counter


def test_flops_accounting_matches_flop_counter():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8), text_len=8)
    cost = CostModel.from_model(model)
    with counted() as counter:
        forward(model, inputs, 500.0)
    assert cost.uncached_forward(192, 8) == pytest.approx(counter.get_total_flops(), rel=0.02)
    handle = apply_hetcache(model, SOME.replace(context_ratio=0.1), strict=False, plan="FPR")
    with model.cache_context("cond"):
        counts = []
        for t in (900.0, 800.0, 700.0):
            with counted() as counter:
                forward(model, inputs, t)
            counts.append(counter.get_total_flops())
    engine = [c.flops for c in handle.state.run.calls]
    for measured, analytic in zip(counts, engine, strict=True):
        assert analytic == pytest.approx(measured, rel=0.02)
    assert counts[1] < 0.8 * counts[0]
    assert handle.stats()["flops"] == pytest.approx(sum(counts), rel=0.02)


def test_plan_for_known_thresholds_equals_hand_computed_plan():
    spec = StepPlanSpec(reuse_threshold=0.1, full_threshold=0.15, warmup_steps=2, final_full_steps=1)
    changes = [0.5, 0.04, 0.04, 0.04, 0.2, 0.01, 0.12, 0.03]
    # warm-up F F; then accumulated .04 R, .08 R, .12 P (reset), .2 F, .01 R, .13 P (reset); final step F
    assert plan_from_changes(changes, spec) == "FFRRPFRPF"
    doubled = StepPlanSpec(
        reuse_threshold=0.1, full_threshold=0.15, warmup_steps=1, final_full_steps=0, polynomial=(2.0, 0.0)
    )
    # rescaled increments .08: .08 R, .16 F (reset); the last step is FULL even with final_full_steps 0
    assert plan_from_changes([0.04, 0.04, 0.04], doubled) == "FRFF"


def test_plan_from_the_model_timesteps_is_computed_once_and_used():
    model = tiny_vace_model()
    timesteps = torch.tensor(TIMES)
    spec = SOME.step_plan
    changes = relative_l1_changes(timestep_modulation(model, timesteps))
    assert len(changes) == len(TIMES) - 1 and all(c > 0 for c in changes)
    expected = plan_from_changes(changes, spec)
    assert resolve_plan(model, timesteps, spec) == expected

    class Scheduler:
        pass

    scheduler = Scheduler()
    scheduler.timesteps = timesteps
    handle = apply_hetcache(model, SOME, strict=False, scheduler=scheduler)
    denoise(model, model_inputs(box_token_mask(1, 3, 8, 8)), TIMES)
    assert handle.stats()["plan"] == expected == handle.stats()["decisions"]


@pytest.mark.parametrize("selection", ["stride", "kmeans", "attention", "kmeans_attention"])
def test_every_selection_strategy_runs_and_refreshes_after_full_steps(selection):
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    policy = SOME.replace(selection=selection, context_ratio=0.2, clusters=4)
    handle = apply_hetcache(model, policy, strict=False, plan="FPPFP")
    outs = denoise(model, inputs, TIMES)
    assert all(torch.isfinite(o).all() for o in outs)
    capture = handle.state.contexts["cond"].capture
    if selection in ("attention", "kmeans_attention"):
        scores = capture.scores[0]
        assert scores.std() > 0  # not the reference code's constant score
        assert scores.sum().item() == pytest.approx(48.0, rel=1e-4)  # each of the 48 generative queries has mass 1
    if selection in ("kmeans", "kmeans_attention"):
        assert capture.features is not None
    assert handle.stats()["active_fraction"][1] == handle.stats()["active_fraction"][4]


def test_fingerprint_mismatch_and_unsupported_models():
    model = tiny_vace_model()
    other = Policy(name="other", model=model_spec_from_fingerprint(model_fingerprint(tiny_vace_model(num_layers=3))))
    with pytest.raises(FingerprintMismatchError, match="num_layers: policy 3 vs model 4"):
        apply_hetcache(model, other)
    apply_hetcache(model, other, strict=False).remove()
    from diffusers import CogVideoXTransformer3DModel

    cog = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=1,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        text_embed_dim=16,
        time_embed_dim=4,
    )
    with pytest.raises(
        UnsupportedModelError, match=r"CogVideoXTransformer3DModel \(cogvideox\) is read by the profiler"
    ):
        apply_hetcache(cog, SOME)
    with pytest.raises(UnsupportedModelError, match=r"hetcache/engine/cogvideox\.py"):
        apply_hetcache(cog, SOME)
