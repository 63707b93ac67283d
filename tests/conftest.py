"""Shared fixtures: tiny random-weight Wan / Wan-VACE transformers and pipelines (real diffusers classes)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hetcache import reference
from hetcache.architectures import wan_config
from hetcache.policy import Policy
from hetcache.workloads.clips import Clip

if os.environ.get("HETCACHE_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["HETCACHE_TEST_THREADS"]))

# a Wan-VACE of tiny sizes, every other constructor argument the released one's (hetcache.architectures)
TINY_VACE = wan_config(
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    ffn_dim=64,
    num_layers=4,
    rope_max_seq_len=64,
    vace_layers=[0, 2],
    vace_in_channels=96,
)
TINY_WAN = {k: v for k, v in TINY_VACE.items() if not k.startswith("vace")}
# the engine tests' usual token-level policy: half the margin and a quarter of the context recomputed
SOME = Policy(name="some").replace(margin_ratio=0.5, context_ratio=0.25, selection="stride")


@pytest.fixture
def no_grad():
    """Inference mode for a test module (`pytestmark = pytest.mark.usefixtures("no_grad")`)."""
    with torch.no_grad():
        yield


def forward(model, inputs: dict, t: float) -> torch.Tensor:
    """One transformer call at timestep `t` (one per batch item), the output tensor only."""
    return model(timestep=torch.tensor([t] * inputs["hidden_states"].shape[0]), return_dict=False, **inputs)[0]


def denoise(model, inputs: dict, times, context: str = "cond") -> list[torch.Tensor]:
    """One call per timestep in one cache context, as a pipeline's denoising loop makes them."""
    with model.cache_context(context):
        return [forward(model, inputs, t) for t in times]


def tiny_vace_model(seed: int = 0, **overrides):
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(seed)
    return WanVACETransformer3DModel(**{**TINY_VACE, **overrides}).eval()


def tiny_wan_model(seed: int = 0, **overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_WAN, **overrides}).eval()


def box_token_mask(
    batch: int, frames: int, h: int, w: int, box: tuple[int, int, int, int] = (2, 6, 2, 6)
) -> torch.Tensor:
    """Token mask [B, T', h, w] with a static box (top, bottom, left, right in tokens)."""
    mask = torch.zeros(batch, frames, h, w, dtype=torch.bool)
    top, bottom, left, right = box
    mask[:, :, top:bottom, left:right] = True
    return mask


def control_with_mask(token_mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """VACE control states [B, 96, T', 2h, 2w]: random latents plus the mask in channels 32:96."""
    batch, frames, h, w = token_mask.shape
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 32, frames, 2 * h, 2 * w, generator=gen)
    cells = token_mask.float().repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return torch.cat([latents, cells.unsqueeze(1).expand(batch, 64, frames, 2 * h, 2 * w)], dim=1)


def model_inputs(token_mask: torch.Tensor, seed: int = 0, text_len: int = 8, text_dim: int = 32) -> dict:
    """Transformer kwargs for a token mask: noisy latents, control states and prompt embeddings."""
    batch, frames, h, w = token_mask.shape
    gen = torch.Generator().manual_seed(seed + 1)
    return {
        "hidden_states": torch.randn(batch, 16, frames, 2 * h, 2 * w, generator=gen),
        "encoder_hidden_states": torch.randn(batch, text_len, text_dim, generator=gen),
        "control_hidden_states": control_with_mask(token_mask, seed),
    }


@pytest.fixture
def tiny_vace():
    return tiny_vace_model()


@pytest.fixture
def tiny_wan():
    return tiny_wan_model()


def tiny_pipeline(seed: int = 0, **transformer_overrides):
    """A WanVACEPipeline with the reference (random) VAE and a tiny random transformer."""
    from diffusers import WanVACEPipeline

    pipe = WanVACEPipeline(
        vae=reference.random_vae(seed),
        transformer=tiny_vace_model(seed, **transformer_overrides),
        scheduler=reference.scheduler(),
        text_encoder=None,
        tokenizer=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_clip(frames: int = 9, height: int = 64, width: int = 64, kind: str = "box") -> Clip:
    """A deterministic clip with a static centre box mask (or an empty/full mask)."""
    rng = np.random.default_rng(0)
    video = (rng.random((frames, height, width, 3)) * 255).astype(np.uint8)
    mask = np.zeros((frames, height, width), dtype=bool)
    if kind == "box":
        mask[:, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
    elif kind == "full":
        mask[:] = True
    return Clip(name=kind, frames=video, mask=mask)


def pipeline_call(clip: Clip, steps: int, guidance_scale: float) -> dict:
    """Keyword arguments of a latent-output WanVACEPipeline call on `clip` with fixed random prompt embeddings
    (pass `generator=` per call so that two calls draw the same noise)."""
    from hetcache.workloads.execute import pipeline_inputs

    video, mask = pipeline_inputs(clip)
    embeds = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(3))
    frames, height, width = clip.frames.shape[:3]
    return dict(
        video=video,
        mask=mask,
        prompt_embeds=embeds,
        negative_prompt_embeds=-embeds,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="latent",
    )
