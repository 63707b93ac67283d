"""LTX-Video through the engine: exactness, PARTIAL / REUSE FLOPs against FlopCounterMode, per-token timesteps,
CFG as one batch of two, the mask-to-token mapping at its VAE's 8 × 32 × 32 strides, and the memory plan."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hetcache import apply_hetcache
from hetcache.architectures import ARCHITECTURES, ltx_config
from hetcache.cost import CostModel
from hetcache.engine.ltx import LTX_VAE
from hetcache.errors import InputError, UnsupportedModelError
from hetcache.memory import plan_memory
from hetcache.policy import Policy
from hetcache.tokens import pixel_mask_to_token_mask

pytestmark = pytest.mark.usefixtures("no_grad")

TINY_LTX = ltx_config(num_attention_heads=2, attention_head_dim=8, num_layers=3, in_channels=8, caption_channels=16)
GRID = (3, 4, 4)  # latent frames, height, width: 17 frames of 128 x 128 pixels at 8 x 32 x 32
EVERYTHING = Policy(name="everything").replace(margin_ratio=1.0, context_ratio=1.0, selection="stride")
SOME = Policy(name="some").replace(margin_width=1, margin_ratio=0.5, context_ratio=0.25, selection="stride")


def tiny_ltx(seed: int = 0, **overrides):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(**{**TINY_LTX, **overrides}).eval()


def ltx_inputs(batch: int = 1, text_len: int = 6, seed: int = 1, padded: bool = True) -> dict:
    """Transformer kwargs as LTXPipeline passes them (packed latents, latent sizes, the prompt's attention mask)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len)
    if padded:
        mask[:, -2:] = 0  # padding tokens of the prompt: the cross-attention must ignore them
    return {
        "hidden_states": torch.randn(batch, GRID[0] * GRID[1] * GRID[2], 8, generator=gen),
        "encoder_hidden_states": torch.randn(batch, text_len, 16, generator=gen),
        "encoder_attention_mask": mask,
        "num_frames": GRID[0],
        "height": GRID[1],
        "width": GRID[2],
        "rope_interpolation_scale": (8 / 25, 32, 32),
    }


def call(model, inputs: dict, t: float | torch.Tensor) -> torch.Tensor:
    batch = inputs["hidden_states"].shape[0]
    timestep = t if isinstance(t, torch.Tensor) else torch.full((batch,), t)
    return model(timestep=timestep, return_dict=False, **inputs)[0]


def run(model, inputs: dict, times, context: str = "cond_uncond") -> list[torch.Tensor]:
    with model.cache_context(context):
        return [call(model, inputs, t) for t in times]


def box_mask(batch: int = 1) -> torch.Tensor:
    """Token mask [T', h, w]: a 2 x 2 box of tokens in every latent frame."""
    mask = torch.zeros(*GRID, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    return mask


def test_all_full_equals_the_stock_model_also_with_per_token_timesteps():
    model = tiny_ltx()
    inputs = ltx_inputs(batch=2)
    per_token = torch.full((2, 48), 700.0)
    per_token[:, :16] = 0.0  # a conditioned first latent frame, as LTXConditionPipeline sets it
    times = (900.0, per_token, 500.0)
    stock = [call(model, inputs, t) for t in times]
    with apply_hetcache(model, EVERYTHING, strict=False, plan="FFF", mask=box_mask()) as handle:
        cached = run(model, inputs, times)
    for a, b in zip(stock, cached, strict=True):
        assert (a - b).abs().max().item() <= 1e-5
    assert handle.stats()["decisions"] == "FFF"


def test_partial_with_every_token_and_a_reuse_step_follow_the_stock_model():
    model = tiny_ltx()
    inputs = ltx_inputs()
    plain = call(model, inputs, 500.0)
    with apply_hetcache(model, EVERYTHING, strict=False, plan="FP", mask=box_mask()):
        full, partial = run(model, inputs, (500.0, 500.0 - 1e-3))
    assert (full - plain).abs().max().item() <= 1e-5
    # every token computed against its own cached keys: the same as a full step
    assert (partial - plain).abs().max().item() <= 1e-3 * plain.abs().max().item()
    # skipped tokens from cache, their keys/values refreshed from their (here: unchanged) inputs: as exact
    with apply_hetcache(model, SOME.replace(refresh_skipped_kv=True), strict=False, plan="FP", mask=box_mask()):
        _, refreshed = run(model, inputs, (500.0, 500.0 - 1e-3))
    assert (refreshed - plain).abs().max().item() <= 1e-3 * plain.abs().max().item()
    with apply_hetcache(model, SOME.replace(forecast="linear"), strict=False, plan="FFR", mask=box_mask()) as handle:
        outs = run(model, inputs, (500.0, 499.999, 499.998))
    assert (outs[2] - plain).abs().max().item() < 1e-3 * plain.abs().max().item()
    assert handle.stats()["decisions"] == "FFR"


def test_partial_changes_only_what_it_computes_and_skips_the_rest():
    model = tiny_ltx()
    inputs = ltx_inputs()
    with apply_hetcache(model, SOME, strict=False, plan="FP", mask=box_mask()) as handle:
        full, partial = run(model, inputs, (600.0, 500.0))
    stats = handle.stats()
    assert stats["token_classes"]["generative"] == [3 * 2 * 2]
    assert 0 < stats["active_fraction"][1] < 0.7
    assert not torch.equal(full, partial) and torch.isfinite(partial).all()


@contextlib.contextmanager
def counted():
    """FlopCounterMode with attention on the math kernel (the fused CPU kernel is not counted by torch)."""
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        yield counter


@pytest.mark.parametrize("per_token", [False, True])
def test_flops_of_full_partial_and_reuse_match_flop_counter(per_token):
    model = tiny_ltx()
    inputs = ltx_inputs(batch=2, text_len=6)
    cost = CostModel.from_model(model)
    times = [torch.full((2, 48), t) if per_token else t for t in (900.0, 800.0, 700.0)]
    with counted() as counter:
        call(model, inputs, times[0])
    rows = 48 if per_token else 1
    assert cost.uncached_forward(48, 6, batch=2, time_rows=rows) == pytest.approx(counter.get_total_flops(), rel=0.02)
    policy = SOME.replace(refresh_skipped_kv=True)
    with apply_hetcache(model, policy, strict=False, plan="FPR", mask=box_mask()) as handle:
        counts = []
        with model.cache_context("cond_uncond"):
            for t in times:
                with counted() as counter:
                    call(model, inputs, t)
                counts.append(counter.get_total_flops())
    engine = [c.flops for c in handle.state.run.calls]
    for measured, analytic in zip(counts, engine, strict=True):
        assert analytic == pytest.approx(measured, rel=0.02)
    assert counts[2] < counts[1] < 0.8 * counts[0]


def test_mask_to_tokens_at_the_ltx_strides():
    """One token is 32 x 32 pixels over 8 frames (the first frame alone): one masked pixel marks its whole token."""
    pixels = torch.zeros(17, 128, 128)
    pixels[9, 40, 70] = 1.0  # frame 9 → latent frame 2 (frames 9..16); row 40 → token 1, column 70 → token 2
    tokens = pixel_mask_to_token_mask(pixels, LTX_VAE, (1, 1, 1))
    assert tokens.shape == (1, *GRID) and tokens.sum() == 1 and tokens[0, 2, 1, 2]
    assert pixel_mask_to_token_mask(pixels, LTX_VAE, (1, 1, 1), threshold=0.5).sum() == 0
    model = tiny_ltx()
    with apply_hetcache(model, SOME, strict=False, plan="FP", mask=pixels) as handle:
        run(model, ltx_inputs(), (600.0, 500.0))
    assert handle.stats()["token_classes"]["generative"] == [1]
    with pytest.raises(InputError, match=r"17 frames x 128 x 128 with the ltx VAE"):
        apply_hetcache(model, SOME, strict=False, plan="FP", mask=torch.zeros(17, 100, 128))
        run(model, ltx_inputs(), (600.0,))


def test_cfg_batch_of_two_in_one_context_and_the_memory_plan_agrees():
    model = tiny_ltx()
    inputs = ltx_inputs(batch=2)
    with apply_hetcache(model, SOME, strict=False, plan="FPR", mask=box_mask()) as handle:
        run(model, inputs, (900.0, 800.0, 700.0))
    stats = handle.stats()
    assert list(stats["decisions_by_context"]) == ["cond_uncond"]
    plan = plan_memory(
        model, height=128, width=128, num_frames=17, policy=SOME, mask=box_mask(), text_len=6, steps="FPR"
    )
    assert plan.contexts == ("cond_uncond",) and plan.batch == 2
    assert plan.cache_bytes == stats["cache_bytes"]


def test_unsupported_ltx_variants_and_missing_grid_are_refused():
    with pytest.raises(UnsupportedModelError, match="patch size 1x2x2"):
        apply_hetcache(tiny_ltx(patch_size=2), SOME, strict=False)
    model = tiny_ltx()
    inputs = {k: v for k, v in ltx_inputs().items() if k not in ("num_frames", "height", "width")}
    with apply_hetcache(model, SOME, strict=False, plan="F", mask=box_mask()), pytest.raises(InputError, match="grid"):
        run(model, inputs, (900.0,))


def test_the_real_ltx_architecture_sizes():
    arch = ARCHITECTURES["ltx-video-2b"]
    assert arch.dim == 2048 and arch.vae == LTX_VAE and arch.shape.num_layers == 28
    assert 1.8e9 < arch.parameters() < 2.2e9  # LTX-Video "2B"
    plan = plan_memory(arch, height=512, width=768, num_frames=121, policy=SOME)
    assert plan.tokens.grid == (16, 16, 24) and plan.contexts == ("cond_uncond",)
