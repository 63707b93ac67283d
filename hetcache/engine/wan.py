"""The Wan / Wan-VACE family: config shape, VAE strides, token grid, timestep modulation, block layout and maths.

Wan2.1 / Wan2.2 (`WanTransformer3DModel`) and Wan-VACE (`WanVACETransformer3DModel`): latents [B, C, T, H, W]
patched (1, 2, 2); the VAE compresses 4 × 8 × 8 (Wan2.2's 48-channel VAE 4 × 16 × 16); the blocks are modulated by
the condition embedder's `timestep_proj`; CFG runs the transformer twice per step in two cache contexts. The block
maths live in `wan_blocks.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock
from diffusers.models.transformers.transformer_wan_vace import WanVACETransformer3DModel, WanVACETransformerBlock

from ..errors import UnsupportedModelError
from ..tokens import VaeStrides
from .registry import (
    MAIN,
    VACE,
    BlockAdapter,
    Family,
    ModelShape,
    TransformerAdapter,
    register_block,
    register_family,
)
from .wan_blocks import block_body, block_kv, text_kv, vace_project_in, vace_project_out

WAN_ARGUMENTS = {"hidden": "hidden_states", "text": "encoder_hidden_states", "temb": "temb", "rope": "rotary_emb"}
WAN_VAE = VaeStrides(temporal=4, spatial=8)
WAN22_VAE = VaeStrides(temporal=4, spatial=16)  # Wan2.2's 48-channel VAE
# Channels of WanVACE `control_hidden_states` that hold the 8x8 pixel-unshuffled mask.
VACE_MASK_CHANNELS = slice(32, 96)
# Config fields that change what a policy means (layer indices, token grid, cost); the shipped policies'
# fingerprints hash exactly these, in this order.
WAN_FIELDS = (
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "ffn_dim",
    "patch_size",
    "in_channels",
    "text_dim",
    "vace_layers",
    "vace_in_channels",
)


def wan_shape(config: Mapping[str, Any]) -> ModelShape:
    return ModelShape(
        heads=config["num_attention_heads"],
        head_dim=config["attention_head_dim"],
        ffn_dim=config["ffn_dim"],
        num_layers=config["num_layers"],
        num_vace_layers=len(config.get("vace_layers") or []),
        patch=tuple(config["patch_size"]),
        in_channels=config["in_channels"],
        out_channels=config.get("out_channels") or config["in_channels"],
        text_dim=config["text_dim"],
        freq_dim=config["freq_dim"],
        vace_in_channels=config.get("vace_in_channels") or 0,
    )


def wan_vae(config: Mapping[str, Any]) -> VaeStrides:
    """4 × 8 × 8, or 4 × 16 × 16 for the Wan2.2 VAE (48 latent channels)."""
    return WAN22_VAE if config.get("in_channels") == 48 else WAN_VAE


def wan_call_grid(config: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple[int, int, int] | None:
    hidden = inputs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 5:
        return None
    patch = tuple(config["patch_size"])
    return tuple(s // p for s, p in zip(hidden.shape[2:], patch, strict=True))


@torch.no_grad()
def wan_timestep_modulation(transformer: torch.nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The per-step timestep modulation [S, 6·D] (`timestep_proj` of Wan's condition embedder)."""
    embedder = transformer.condition_embedder
    device = next(embedder.time_proj.parameters()).device
    t = torch.as_tensor(timesteps, device=device).flatten()
    projected = embedder.timesteps_proj(t)
    dtype = next(embedder.time_embedder.parameters()).dtype
    temb = embedder.time_embedder(projected.to(dtype))
    return embedder.time_proj(embedder.act_fn(temb)).float()


def token_mask_from_control(
    control_hidden_states: torch.Tensor, patch_size: tuple[int, int, int] = (1, 2, 2), threshold: float = 0.0
) -> torch.Tensor:
    """Token mask [B, T', h, w] read back from WanVACE control states (channels 32:96: 8x8-unshuffled mask).

    WanVACEPipeline samples one pixel frame per latent frame here (nearest-exact), so for a mask that moves
    between the frames of one latent group this is a subset of `pixel_mask_to_token_mask`; pass the pixel
    mask to `apply_hetcache(mask=...)` for moving masks.
    """
    cells = (control_hidden_states[:, VACE_MASK_CHANNELS].float() > 0.5).float().mean(dim=1)  # [B, T', H8, W8]
    coverage = F.avg_pool3d(cells.unsqueeze(1), patch_size).squeeze(1)
    return coverage > threshold


def vace_mask(inputs: Mapping[str, Any], patch: tuple[int, int, int], threshold: float) -> torch.Tensor | None:
    """Wan-VACE: the edit mask held in the control states; None for plain Wan."""
    control = inputs.get("control_hidden_states")
    return None if control is None else token_mask_from_control(control, patch, threshold)


def wan_check(model: torch.nn.Module) -> None:
    """Refuse the Wan variants the block maths do not restate (image conditioning through added K/V)."""
    if any(block.attn2.add_k_proj is not None for block in model.blocks):
        raise UnsupportedModelError(
            "image-conditioned Wan transformers (I2V, added K/V projections) are not supported yet.",
            "use a Wan T2V or Wan-VACE transformer.",
        )


register_block(
    WanTransformerBlock,
    BlockAdapter(
        kind=MAIN,
        arguments=WAN_ARGUMENTS,
        body=block_body,
        kv=block_kv,
        text_kv=lambda block, text: text_kv(block.attn2, text),
    ),
)
register_block(
    WanVACETransformerBlock,
    BlockAdapter(
        kind=VACE,
        arguments={**WAN_ARGUMENTS, "control": "control_hidden_states"},
        stream="control",
        body=block_body,
        kv=block_kv,
        text_kv=lambda block, text: text_kv(block.attn2, text),
        project_in=vace_project_in,
        project_out=vace_project_out,
        projects_in=lambda block: block.proj_in is not None,
    ),
)


def _layout(vace: bool) -> TransformerAdapter:
    return TransformerAdapter(
        main_blocks="blocks",
        vace_blocks="vace_blocks" if vace else None,
        head="norm_out",
        head_input_dtype=torch.float32,  # Wan calls norm_out(hidden_states.float())
        text_embedder="condition_embedder",
        text_output_index=2,
    )


_COMMON = dict(
    fields=WAN_FIELDS,
    shape=wan_shape,
    vae=wan_vae,
    call_grid=wan_call_grid,
    timestep_modulation=wan_timestep_modulation,
    modulation_source="timestep_proj",
    processors=("WanAttnProcessor",),
    check=wan_check,
    text_len=512,  # umT5-XXL prompt tokens of the released pipelines
)
WAN = register_family(Family(name="wan", classes=(WanTransformer3DModel.__name__,), layout=_layout(False), **_COMMON))
WAN_VACE = register_family(
    Family(
        name="wan-vace",
        classes=(WanVACETransformer3DModel.__name__,),
        layout=_layout(True),
        mask_from_inputs=vace_mask,
        **_COMMON,
    )
)
