"""Tiny LTX-Video pipelines (saved with save_pretrained, loaded back, no downloads) through the workload, the
profiler, hetcache-tune and `hetcache run`: the same timesteps as the pipeline, the stock output all-FULL, per-token
timesteps under LTXConditionPipeline, and a tuned policy whose step rule reads the profile's fitted curve."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hetcache import apply_hetcache
from hetcache.architectures import ltx_config
from hetcache.cli import main as hetcache_main
from hetcache.errors import InputError
from hetcache.policy import Policy, load_policy
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.spec import Workload, parse_clip_names

SIZE = dict(height=128, width=128, num_frames=17)  # 3 latent frames of 4 x 4 tokens at 8 x 32 x 32
SIZE_FLAGS = ["--height", "128", "--width", "128", "--frames", "17"]
ALL_FULL = Policy(name="all-full").replace(margin_ratio=1.0, context_ratio=1.0, selection="stride")


def tiny_ltx_pipeline(kind: str = "LTXPipeline"):
    """A random-weight LTX pipeline whose VAE compresses as the released one does (8 x 32 x 32, patch 4)."""
    import diffusers
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        **ltx_config(num_attention_heads=2, attention_head_dim=8, num_layers=3, in_channels=8, caption_channels=16)
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    pipe = getattr(diffusers, kind)(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{kind: folder} of both LTX pipelines, and a prompt-embeddings file [1, 8, 16]."""
    root = tmp_path_factory.mktemp("ltx")
    folders = {}
    for kind in ("LTXPipeline", "LTXConditionPipeline"):
        folders[kind] = root / kind
        tiny_ltx_pipeline(kind).save_pretrained(folders[kind])
    embeds = root / "embeds.safetensors"
    gen = torch.Generator().manual_seed(3)
    save_file({"prompt_embeds": torch.randn(1, 8, 16, generator=gen)}, str(embeds))
    return folders, embeds


def session_for(
    saved, kind: str, clips: str = "box", steps: int = 5, contract: str = "none", size: dict | None = None
) -> LoadedWorkload:
    folders, embeds = saved
    workload = Workload(
        contract=contract,
        pipeline=str(folders[kind]),
        prompt_embeds=str(embeds),
        steps=steps,
        guidance_scale=3.0,
        clips=parse_clip_names(clips),
        **(size or SIZE),
    )
    return LoadedWorkload(workload)


@pytest.mark.parametrize("kind", ["LTXPipeline", "LTXConditionPipeline"])
def test_all_full_equals_the_stock_pipeline_and_the_session_knows_its_timesteps(saved, kind):
    session = session_for(saved, kind)
    clip = session.clips[0]
    assert clip.frames.shape[:3] == (17, 128, 128)
    plain = session.generate(clip, decode=False)
    generation, stats = session.generate_cached(clip, ALL_FULL, strict=False, plan="FFFFF", decode=False)
    assert (generation.latents - plain.latents).abs().max().item() <= 1e-5
    assert stats["decisions"] == "FFFFF" and list(stats["decisions_by_context"]) == ["cond_uncond"]
    with apply_hetcache(session.pipe, ALL_FULL, strict=False, mask=session.engine_mask(clip)) as handle:
        session.generate(clip, decode=False)
        run = handle.state.run
    assert run.timesteps == pytest.approx(session.timesteps().tolist())  # the tuner plans on the run's timesteps
    # LTXConditionPipeline conditions on the clip's first frame: its latent frame is denoised at timestep 0
    assert run.time_rows == (48 if kind == "LTXConditionPipeline" else 1)


def test_partial_and_reuse_steps_on_a_pipeline_run_save_flops(saved):
    session = session_for(saved, "LTXConditionPipeline")
    clip = session.clips[0]
    plain = session.generate(clip, decode=False)
    policy = Policy(name="some").replace(margin_width=1, context_ratio=0.25, selection="stride", forecast="linear")
    generation, stats = session.generate_cached(clip, policy, strict=False, plan="FFPRF", decode=False)
    assert stats["decisions"] == "FFPRF"
    assert stats["flops"] < 0.85 * stats["flops_uncached"]
    assert stats["token_classes"]["generative"][0] > 0
    error = (generation.latents - plain.latents).norm() / plain.latents.norm()
    assert 0 < float(error) < 0.5


def test_paste_keeps_the_source_outside_the_mask_and_conditioned_ltx_refuses_blend_with_the_fix(saved):
    session = session_for(saved, "LTXPipeline", contract="paste")
    clip = session.clips[0]
    generation = session.generate(clip)
    outside = ~clip.mask
    assert np.array_equal(generation.frames[outside], clip.frames[outside].astype(np.float32) / 255.0)
    assert not np.array_equal(generation.frames[clip.mask], clip.frames[clip.mask].astype(np.float32) / 255.0)
    with pytest.raises(
        InputError, match="latent blending, which hetcache does not do for LTXConditionPipeline"
    ) as refusal:
        session_for(saved, "LTXConditionPipeline", contract="blend")
    assert "--contract paste" in refusal.value.fix


def quiet(fn, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn(*args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_profile_tune_and_run_an_ltx_pipeline_folder(saved, tmp_path):
    """hetcache-profile → hetcache-tune (reading the profile's step curve) → hetcache run on held-out clips."""
    from hetcache.profiler.cli import main as profile_main
    from hetcache.tuner.cli import main as tune_main

    folders, embeds = saved
    source = ["--pipeline", str(folders["LTXPipeline"]), "--prompt-embeds", str(embeds), *SIZE_FLAGS]
    source += ["--steps", "6", "--guidance-scale", "3"]
    profile = tmp_path / "profile"
    code, _, err = quiet(profile_main, [*source, "--clips", "box,moving", "--out", str(profile)])
    assert code == 0, err
    data = json.loads((profile / "profile.json").read_text())
    assert data["step_curve"]["modulation_source"] == "time_embed"
    tune = tmp_path / "tune"
    args = [*source, "--clips", "box,moving", "--budget", "psnr=20", "--trials", "4", "--profile", str(profile)]
    code, _, err = quiet(tune_main, [*args, "--out", str(tune)])
    assert code == 0, err
    policy = load_policy(tune / "policy.json")
    assert policy.model.family == "ltx" and policy.model.class_name == "LTXVideoTransformer3DModel"
    # the profiler's fitted curve is the step rule's rescaling: both read LTX's time_embed modulation
    assert policy.step_plan.polynomial == pytest.approx(data["step_curve"]["polynomial"])
    run = tmp_path / "run"
    held_out = ["--clips", "box-7001", "--policy", str(tune / "policy.json"), "--compare", "--reps", "1"]
    code, _, err = quiet(hetcache_main, ["run", *source, *held_out, "--out", str(run)])
    assert code == 0, err
    report = json.loads((run / "run.json").read_text())
    assert report["clips"][0]["speedup_flops"] >= 1.0


def test_blend_keeps_the_source_latents_outside_the_edit_on_ltx_video(saved):
    """Latent blending on LTXPipeline's packed latents: the final latents outside the latent edit mask are the source's,
    and an all-FULL cached run under blend equals the uncached blended one. (The random VAE reaches 6 cells of 32
    pixels: at 128² the conservative edit mask covers every cell, so this runs at 512².)"""
    size = dict(SIZE, height=512, width=512)
    session = session_for(saved, "LTXPipeline", clips="small_box", steps=3, contract="blend", size=size)
    clip = session.clips[0]
    plain = session.generate(clip, decode=False)
    source, weights = session.blend_inputs(clip)
    pack = session.kind.pack_latents
    packed_source, keep = pack(session.pipe, source), pack(session.pipe, weights) < 0.5
    assert keep.any() and not keep.all()
    kept = keep.expand_as(packed_source)
    assert torch.equal(plain.latents[kept], packed_source[kept])
    assert not torch.allclose(plain.latents[~kept], packed_source[~kept], atol=1e-3)
    cached, _ = session.generate_cached(clip, ALL_FULL, strict=False, plan="FFF", decode=False)
    assert (cached.latents - plain.latents).abs().max().item() <= 1e-5


def test_the_discard_trim_under_blend_on_ltx_video(saved):
    """LTXPipeline under blend with the discard trim (tokens.trim_discarded): its packed tokens are latent cells (patch
    1), so the trimmed last block computes the cells inside the edit mask only; all-FULL, the final latents equal the
    uncached blended run's (at 512², see above)."""
    size = dict(SIZE, height=512, width=512)
    session = session_for(saved, "LTXPipeline", clips="small_box", steps=3, contract="blend", size=size)
    clip = session.clips[0]
    plain = session.generate(clip, decode=False)
    trim = ALL_FULL.replace(trim_discarded=True)
    cached, stats = session.generate_cached(clip, trim, strict=False, plan="FFF", decode=False)
    _, untrimmed = session.generate_cached(clip, ALL_FULL, strict=False, plan="FFF", decode=False)
    assert stats["trimmed_steps"] == [0, 1, 2] and stats["flops"] < untrimmed["flops"]
    assert (cached.latents - plain.latents).abs().max().item() <= 1e-5
