"""The profiler on four diffusers video transformer families, each saved with save_pretrained and loaded back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_pipeline, tiny_wan_model
from hetcache.profiler import profile

from hetcache import reference
from hetcache.workloads.execute import pipeline_inputs

STEPS = 3


def build_wan():
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=tiny_wan_model(),
        vae=reference.random_vae(),
        scheduler=reference.scheduler(),
    )
    positive, negative = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    call = dict(prompt_embeds=positive, negative_prompt_embeds=negative, height=64, width=64, num_frames=5)
    return pipe, call


def build_vace():
    from conftest import small_clip

    video, mask = pipeline_inputs(small_clip())
    positive, negative = reference.random_prompt_embeds()
    call = dict(
        video=video,
        mask=mask,
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=64,
        width=64,
        num_frames=9,
    )
    return tiny_pipeline(), call


def build_cogvideox():
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=2,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=8,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    pipe = CogVideoXPipeline(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=CogVideoXDDIMScheduler()
    )
    call = dict(
        prompt_embeds=torch.randn(1, 8, 32),
        negative_prompt_embeds=torch.randn(1, 8, 32),
        height=32,
        width=32,
        num_frames=9,
    )
    return pipe, call


def build_ltx():
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=2,
        caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    pipe = LTXPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    call = dict(
        prompt_embeds=torch.randn(1, 8, 32),
        prompt_attention_mask=torch.ones(1, 8),
        negative_prompt_embeds=torch.randn(1, 8, 32),
        negative_prompt_attention_mask=torch.ones(1, 8),
        height=32,
        width=32,
        num_frames=9,
    )
    return pipe, call


# family → (builder, expected layer names, tokens per clip, modulation source, joint text+video attention)
FAMILIES = {
    "wan": (build_wan, [f"blocks.{i}" for i in range(4)], 2 * 4 * 4, "timestep_proj", False),
    "wan-vace": (
        build_vace,
        [*(f"blocks.{i}" for i in range(4)), "vace_blocks.0", "vace_blocks.1"],
        3 * 4 * 4,
        "timestep_proj",
        False,
    ),
    "cogvideox": (build_cogvideox, ["transformer_blocks.0", "transformer_blocks.1"], 3 * 2 * 2, "time_embedding", True),
    "ltx": (build_ltx, ["transformer_blocks.0", "transformer_blocks.1"], 3 * 8 * 8, "time_embed", False),
}


def run_args(call: dict) -> dict:
    return {
        **call,
        "num_inference_steps": STEPS,
        "guidance_scale": 5.0,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, pipeline loaded back from a save_pretrained folder, its call arguments)."""
    build = FAMILIES[request.param][0]
    pipe, call = build()
    folder = tmp_path_factory.mktemp(request.param)
    pipe.save_pretrained(folder)
    loaded = type(pipe).from_pretrained(folder, text_encoder=None, tokenizer=None)
    loaded.set_progress_bar_config(disable=True)
    return request.param, loaded, call


def test_profiles_each_family(family):
    name, pipe, call = family
    _, layers, tokens, source, joint = FAMILIES[name]
    plain = pipe(**run_args(call)).frames
    state = sorted(vars(pipe.transformer))
    result = profile(pipe, {**run_args(call), "name": name}, attention_every=1)
    assert sorted(vars(pipe.transformer)) == state
    assert torch.equal(pipe(**run_args(call)).frames, plain)  # hooks gone, model unchanged

    data = result.data
    assert [layer["name"] for layer in data["layers"]] == layers
    assert data["branches"] == ["cond", "uncond"]
    assert data["steps"] == STEPS and len(data["timesteps"]) == STEPS
    assert data["clips"][0]["tokens"] == tokens
    drift = result.tensors()["drift"].astype(np.float64)
    assert drift.shape == (2, STEPS, len(layers), tokens)
    assert np.isfinite(drift).all() and (drift[:, 1:] > 0).all()
    curve = data["step_curve"]
    assert curve["modulation_source"] == source
    assert len(curve["modulation_change"]) == STEPS - 1 == len(curve["output_change"])
    assert all(c > 0 for c in curve["modulation_change"] + curve["output_change"])

    # Without a mask all video queries count; their attention mass over video keys (+ text keys) sums to 1.
    attention = result.tensors()["attention"].astype(np.float64)
    assert attention.shape == (STEPS, len(layers), tokens)
    video_share = attention.sum(axis=-1) / tokens
    text_share = result.tensors()["attention_text"].astype(np.float64) if joint else 0.0
    np.testing.assert_allclose(video_share + text_share, 1.0, rtol=2e-3)
    assert ("attention_text" in result.tensors()) == joint

    for layer in data["layers"]:
        assert layer["flops"]["self_attention" if layer["kind"] == "main" else "vace"] > 0 and layer["time_ms"] > 0
        assert (layer["drift"]["all"] > 0 and layer["drift"]["generative"] is None) or name == "wan-vace"
    assert data["flops_source"].startswith("counted" if name == "cogvideox" else "analytic")  # engine families
    assert data["flops_split"]["embed_head"] > 0


def test_ltx_flops_match_hand_count():
    """LTX self-attention: four projections (2·N·D² each) plus scores and values (2 · 2·N²·D)."""
    pipe, call = build_ltx()
    pipe.set_progress_bar_config(disable=True)
    result = profile(pipe, run_args(call), attention_every=0, layers="1")
    n, d = 3 * 8 * 8, 16
    layer = result.data["layers"][0]
    assert layer["name"] == "transformer_blocks.1"
    assert layer["flops"]["self_attention"] == 8 * n * d * d + 4 * n * n * d
    assert layer["flops"]["ffn"] == 2 * 2 * n * d * 4 * d
    assert layer["flops"]["cross_attention"] == 2 * 2 * n * d * d + 2 * 2 * 8 * d * d + 4 * n * 8 * d


def test_pixel_mask_on_another_family():
    """A pixel mask on LTX: max-pooled onto the token grid; the generative queries' attention splits by class."""
    pipe, call = build_ltx()
    pipe.set_progress_bar_config(disable=True)
    mask = np.zeros((9, 32, 32), dtype=bool)
    mask[:, 8:16, 8:16] = True  # 32 px → 8 latent tokens per side: tokens 2..3 in h and w
    result = profile(pipe, {**run_args(call), "edit_mask": mask}, attention_every=1, margin_width=1)
    counts = result.data["clips"][0]["token_classes"]
    assert counts["generative"] == 3 * 2 * 2
    assert counts["margin"] == 3 * (4 * 4 - 2 * 2 - 4)  # the 1-token disk ring around a 2x2 box
    shares = result.data["layers"][0]["attention_to"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert result.data["headroom"]["context_token_share"] == pytest.approx(counts["context"] / 192)


def test_batched_cfg_branches_are_exact():
    """LTX runs CFG as one batch [uncond; cond] under cache_context("cond_uncond"): each half is its branch."""
    pipe, call = build_ltx()
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    block = pipe.transformer.transformer_blocks[0]
    handle = block.register_forward_hook(lambda m, a, k, o: outputs.append(o.clone()), with_kwargs=True)
    pipe(**run_args(call))
    handle.remove()
    result = profile(pipe, run_args(call), attention_every=0, layers="0")
    drift = result.tensors("pt")["drift"].float()
    assert result.data["branches"] == ["cond", "uncond"]
    for branch, item in ((0, 1), (1, 0)):
        for step in range(1, STEPS):
            now, before = outputs[step][item], outputs[step - 1][item]
            expected = (now - before).abs().sum(-1) / before.abs().sum(-1)
            torch.testing.assert_close(drift[branch, step, 0], expected, rtol=2e-3, atol=1e-4)
