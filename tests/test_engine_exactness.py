"""The engine reproduces the uncached model where it must: all-FULL runs, all-token PARTIAL steps, removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    SOME,
    box_token_mask,
    denoise,
    forward,
    model_inputs,
    pipeline_call,
    small_clip,
    tiny_pipeline,
    tiny_vace_model,
    tiny_wan_model,
)

from hetcache import apply_hetcache, remove_hetcache
from hetcache.errors import CacheConflictError
from hetcache.policy import Policy

pytestmark = pytest.mark.usefixtures("no_grad")


EVERYTHING = Policy(name="everything").replace(margin_ratio=1.0, context_ratio=1.0, selection="stride")


def test_all_full_plan_equals_unhooked_pipeline():
    pipe = tiny_pipeline()
    clip = small_clip()
    kwargs = pipeline_call(clip, steps=4, guidance_scale=4.0)
    reference = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    handle = apply_hetcache(pipe.transformer, SOME, strict=False, plan="FFFF", scheduler=pipe.scheduler)
    cached = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    assert handle.stats()["decisions"] == "FFFF"
    assert handle.stats()["decisions_by_context"] == {"cond": "FFFF", "uncond": "FFFF"}
    assert handle.stats()["cache_bytes"] > 0  # what the caches held when the pipeline ended the run
    assert (cached - reference).abs().max().item() <= 1e-5


def test_partial_step_with_every_token_active_equals_full_step(tiny_vace):
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    plain = forward(tiny_vace, inputs, 400.0)
    apply_hetcache(tiny_vace, EVERYTHING, strict=False, plan="FP")
    _, partial = denoise(tiny_vace, inputs, (500.0, 400.0))
    assert torch.equal(partial, plain)


def test_partial_step_right_after_full_step_on_identical_inputs_equals_it(tiny_vace):
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    plain = forward(tiny_vace, inputs, 500.0)
    handle = apply_hetcache(tiny_vace, SOME, strict=False, plan="FP")
    full, partial = denoise(tiny_vace, inputs, (500.0, 500.0 - 1e-3))
    assert handle.stats()["active_fraction"][1] < 0.9
    assert (full - plain).abs().max().item() <= 1e-6
    # same input, (practically) same timestep: cached keys, values and residuals are exact for the skipped tokens
    assert (partial - plain).abs().max().item() <= 1e-3 * plain.abs().max().item()


def test_remove_restores_exact_behaviour_and_double_apply_is_refused(tiny_vace):
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    plain = forward(tiny_vace, inputs, 500.0)
    apply_hetcache(tiny_vace, SOME, strict=False, plan="FPRP")
    with pytest.raises(CacheConflictError, match="already applied"):
        apply_hetcache(tiny_vace, SOME, strict=False)
    denoise(tiny_vace, inputs, (900.0, 800.0, 700.0, 600.0))
    remove_hetcache(tiny_vace)
    assert torch.equal(forward(tiny_vace, inputs, 500.0), plain)
    assert not hasattr(tiny_vace.blocks[0].forward, "func") or "hetcache" not in repr(tiny_vace.blocks[0].forward)


def test_handle_as_context_manager_removes_the_hooks_also_on_error(tiny_vace):
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    plain = forward(tiny_vace, inputs, 500.0)
    with apply_hetcache(tiny_vace, SOME, strict=False, plan="FR") as handle:
        denoise(tiny_vace, inputs, (900.0, 800.0))
        assert handle.stats()["decisions"] == "FR"
    assert torch.equal(forward(tiny_vace, inputs, 500.0), plain)
    with pytest.raises(RuntimeError, match="inside the block"), apply_hetcache(tiny_vace, SOME, strict=False):
        raise RuntimeError("inside the block")
    assert torch.equal(forward(tiny_vace, inputs, 500.0), plain)
    apply_hetcache(tiny_vace, SOME, strict=False).remove()  # nothing was left attached to refuse this


def test_generate_cached_runs_the_policy_and_detaches_it(tmp_path):
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import Workload

    pipe = tiny_pipeline()
    clip = small_clip(frames=5, height=32, width=32)
    session = LoadedWorkload(Workload(steps=3, clips=(), height=32, width=32, num_frames=5), pipe=pipe)
    plain = session.generate(clip, decode=False)
    generation, stats = session.generate_cached(clip, SOME, strict=False, plan="FRF", decode=False)
    assert stats["decisions"] == "FRF" and stats["flops"] < stats["flops_uncached"]
    assert not torch.equal(generation.latents, plain.latents)
    assert torch.equal(session.generate(clip, decode=False).latents, plain.latents)
    with pytest.raises(ValueError, match="divisible by 16"):  # the pipeline refuses the clip after the hooks
        session.generate_cached(small_clip(frames=5, height=40, width=40), SOME, strict=False)
    assert torch.equal(session.generate(clip, decode=False).latents, plain.latents)


def test_diffusers_cache_already_enabled_is_refused(tiny_vace):
    from diffusers import FirstBlockCacheConfig

    tiny_vace.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(CacheConflictError, match="disable_cache"):
        apply_hetcache(tiny_vace, SOME, strict=False)


def test_plain_wan_transformer_with_explicit_masks():
    model = tiny_wan_model()
    token_mask = box_token_mask(1, 3, 8, 8)
    inputs = {k: v for k, v in model_inputs(token_mask).items() if k != "control_hidden_states"}
    plain = forward(model, inputs, 400.0)
    apply_hetcache(model, EVERYTHING, strict=False, plan="FP", mask=token_mask[0])
    assert torch.equal(denoise(model, inputs, (500.0, 400.0))[1], plain)
    remove_hetcache(model)
    pixel = torch.zeros(9, 128, 128)
    pixel[:, 32:96, 32:96] = 1
    handle = apply_hetcache(model, SOME, strict=False, plan="FPP", mask=pixel)
    denoise(model, inputs, (500.0, 400.0, 300.0))
    stats = handle.stats()
    assert stats["token_classes"]["generative"] == [3 * 4 * 4]
    assert stats["decisions"] == "FPP"


def test_plain_wan_without_mask_is_refused_with_a_clear_message():
    from hetcache.errors import InputError

    model = tiny_wan_model()
    inputs = {k: v for k, v in model_inputs(box_token_mask(1, 3, 8, 8)).items() if k != "control_hidden_states"}
    apply_hetcache(model, SOME, strict=False, plan="FP")
    with pytest.raises(InputError, match="pass mask="):
        denoise(model, inputs, (500.0,))


def test_offload_output_fill_and_bf16_cache(tiny_vace):
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    plain = [forward(tiny_vace, inputs, t) for t in (500.0, 499.0)]
    offloaded = apply_hetcache(tiny_vace, SOME.replace(offload=True), strict=False, plan="FPPFP")
    staged = denoise(tiny_vace, inputs, (500.0, 499.0, 498.0, 497.0, 496.0))
    remove_hetcache(tiny_vace)
    apply_hetcache(tiny_vace, SOME, strict=False, plan="FPPFP")
    resident = denoise(tiny_vace, inputs, (500.0, 499.0, 498.0, 497.0, 496.0))
    remove_hetcache(tiny_vace)
    assert all(torch.equal(a, b) for a, b in zip(staged, resident, strict=True))
    assert offloaded.stats()["decisions"] == "FPPFP"
    for policy in (SOME.replace(skip_fill="output"), SOME.replace(dtype="bfloat16")):
        apply_hetcache(tiny_vace, policy, strict=False, plan="FP")
        outs = denoise(tiny_vace, inputs, (500.0, 499.0))
        remove_hetcache(tiny_vace)
        scale = plain[1].abs().max().item()
        assert (outs[1] - plain[1]).abs().max().item() < 0.05 * scale
    handle = apply_hetcache(tiny_vace, SOME.replace(dtype="bfloat16"), strict=False, plan="FP")
    denoise(tiny_vace, inputs, (500.0, 499.0))
    fp32_model = tiny_vace_model()
    fp32 = apply_hetcache(fp32_model, SOME, strict=False, plan="FP")
    denoise(fp32_model, inputs, (500.0, 499.0))
    assert 0 < handle.stats()["cache_bytes"] < fp32.stats()["cache_bytes"]


def test_second_pipeline_call_starts_clean():
    pipe = tiny_pipeline()
    clip = small_clip()
    kwargs = pipeline_call(clip, steps=5, guidance_scale=3.0)
    apply_hetcache(pipe.transformer, SOME, strict=False, plan="FFPRP", scheduler=pipe.scheduler)

    def call():
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames

    first, second = call(), call()
    assert torch.equal(first, second)
    assert np.isfinite(first.numpy()).all()


def test_wan22_two_experts_are_both_hooked_through_the_pipeline():
    from diffusers import WanVACEPipeline

    from hetcache import reference

    pipe = WanVACEPipeline(
        vae=reference.random_vae(),
        transformer=tiny_vace_model(0),
        transformer_2=tiny_vace_model(1),
        scheduler=reference.scheduler(),
        text_encoder=None,
        tokenizer=None,
        boundary_ratio=0.5,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = pipeline_call(small_clip(), steps=6, guidance_scale=3.0)
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    handle = apply_hetcache(pipe, SOME, strict=False, plan="FFFFFF")
    full = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    assert (full - plain).abs().max().item() <= 1e-5
    stats = handle.stats()
    assert stats["decisions"] == "FFFFFF" and len(stats["plans"]) == 2
    handle.remove()
    handle = apply_hetcache(pipe, SOME, strict=False, plan="FFPRFP")
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    first, second = ([c.decision for c in session.run.calls] for session in handle.states)
    assert first and second  # both experts ran, each hooked
    assert second[0] == "F"  # an expert's first step computes in full, whatever the plan says
    assert handle.stats()["decisions"] == "FFPRFP"
    remove_hetcache(pipe)
    assert torch.equal(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames, plain)
