"""The LTX-Video family (`LTXVideoTransformer3DModel`): one adapter file, the family facts and the block maths.

What differs from Wan, and how this file says it:

- latents arrive packed [B, N, C] (patch 1 × 1 × 1): the token grid comes from the call's `num_frames`, `height`,
  `width` (`LTXPipeline`) or from its `video_coords` (`LTXConditionPipeline`);
- the VAE compresses 8 × 32 × 32, so one token covers a 32 × 32-pixel square over 8 frames (the first frame alone):
  a mask edge moves by whole 32-pixel cells, and a thin mask marks every token it touches;
- the blocks are modulated by `time_embed(timestep)`, per sample or per token ([B, N] timesteps: conditioned frames
  carry a lower noise level), so the modulation is indexed at the computed rows; the step's timestep is the largest;
- cross-attention takes the unnormalised stream and the prompt's attention mask (an `extra_roles` argument);
- CFG runs as one batch of two in one cache context (`cache_context("cond_uncond")`).

The functions restate diffusers' `LTXVideoTransformerBlock.forward` and `LTXVideoAttnProcessor` (same operations,
same order, same dtypes; the rotary embedding is diffusers' own), split so that a subset of the tokens can be
computed against cached keys and values of the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx import (
    LTXVideoTransformer3DModel,
    LTXVideoTransformerBlock,
    apply_rotary_emb,
)

from ..attention_mass import key_attention_mass
from ..errors import UnsupportedModelError
from ..tokens import VaeStrides
from .registry import MAIN, BlockAdapter, Family, ModelShape, TransformerAdapter, register_block, register_family
from .wan_blocks import KVMerge

LTX_VAE = VaeStrides(temporal=8, spatial=32)
LTX_FIELDS = (
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "patch_size",
    "patch_size_t",
    "in_channels",
    "caption_channels",
    "cross_attention_dim",
)
LTX_ARGUMENTS = {
    "hidden": "hidden_states",
    "text": "encoder_hidden_states",
    "temb": "temb",
    "rope": "image_rotary_emb",
    "text_mask": "encoder_attention_mask",
}
FREQ_DIM = 256  # sinusoidal features of `time_embed` (PixArt-alpha's timestep embedder)


# ---------------------------------------------------------------------------------------------------------
# the family


def ltx_shape(config: Mapping[str, Any]) -> ModelShape:
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    return ModelShape(
        heads=config["num_attention_heads"],
        head_dim=config["attention_head_dim"],
        ffn_dim=4 * dim,  # FeedForward(dim, mult=4)
        num_layers=config["num_layers"],
        num_vace_layers=0,
        patch=(config.get("patch_size_t", 1), config.get("patch_size", 1), config.get("patch_size", 1)),
        in_channels=config["in_channels"],
        out_channels=config.get("out_channels") or config["in_channels"],
        text_dim=config["caption_channels"],
        freq_dim=FREQ_DIM,
    )


def ltx_call_grid(config: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(T', h, w) from the latent sizes the pipeline passes, or counted from `video_coords` (one sync per run)."""
    sizes = [inputs.get(key) for key in ("num_frames", "height", "width")]
    pt, p = config.get("patch_size_t", 1), config.get("patch_size", 1)
    if None not in sizes:
        return (int(sizes[0]) // pt, int(sizes[1]) // p, int(sizes[2]) // p)
    coords = inputs.get("video_coords")
    if isinstance(coords, torch.Tensor) and coords.ndim == 3:
        return tuple(int(torch.unique(coords[0, axis]).numel()) for axis in range(3))
    return None


@torch.no_grad()
def ltx_timestep_modulation(transformer: torch.nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The per-step modulation [S, 6·D] every block adds to its scale/shift table (`time_embed`'s first output)."""
    device = transformer.proj_in.weight.device
    t = torch.as_tensor(timesteps, device=device).flatten()
    temb, _ = transformer.time_embed(t, batch_size=t.numel(), hidden_dtype=transformer.proj_in.weight.dtype)
    return temb.float()


def ltx_check(model: torch.nn.Module) -> None:
    config = model.config
    if config.patch_size != 1 or config.patch_size_t != 1:
        raise UnsupportedModelError(
            f"LTX-Video with patch size {config.patch_size_t}x{config.patch_size}x{config.patch_size} is not "
            "supported (every released LTX-Video checkpoint patches 1x1x1).",
            "use an LTX-Video transformer with patch_size=1 and patch_size_t=1.",
        )


# ---------------------------------------------------------------------------------------------------------
# block maths


def _modulation(block: torch.nn.Module, temb: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The six scale/shift/gate tensors [B, n, D] (n = 1, or the rows for per-token timesteps)."""
    table = block.scale_shift_table
    ada = table[None, None].to(temb.device) + temb.reshape(temb.shape[0], temb.size(1), table.shape[0], -1)
    if rows is not None and ada.shape[1] > 1:
        ada = ada.index_select(1, rows)
    return ada.unbind(dim=2)


def _self_qkv(attn: torch.nn.Module, hidden: torch.Tensor, rope) -> tuple[torch.Tensor, ...]:
    query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key = apply_rotary_emb(query, rope), apply_rotary_emb(key, rope)
    return tuple(t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))


def _attend(attn: torch.nn.Module, query, key, value, mask: torch.Tensor | None = None) -> torch.Tensor:
    processor = attn.processor
    out = dispatch_attention_fn(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=0.0,
        is_causal=False,
        backend=processor._attention_backend,
        parallel_config=processor._parallel_config,
    )
    out = out.flatten(2, 3).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


def _cross_attention(attn, hidden: torch.Tensor, kv, text_mask: torch.Tensor | None) -> torch.Tensor:
    key, value = kv
    mask = None
    if text_mask is not None:  # as LTXVideoAttnProcessor prepares it: [B, heads, 1, L]
        batch, length = key.shape[0], key.shape[1]
        mask = attn.prepare_attention_mask(text_mask, length, batch).view(batch, attn.heads, -1, length)
    query = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
    return _attend(attn, query, key, value, mask)


def text_kv(block: torch.nn.Module, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention keys and values of the projected prompt (constant over a run)."""
    attn = block.attn2
    key, value = attn.norm_k(attn.to_k(text)), attn.to_v(text)
    return key.unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1))


def block_kv(block, hidden: torch.Tensor, temb: torch.Tensor, rope, rows: torch.Tensor):
    """Self-attention keys (normed, rotated) and values of the tokens `rows` from their block input [B, n, D]."""
    shift, scale = _modulation(block, temb, rows)[:2]
    attn = block.attn1
    normed = block.norm1(hidden) * (1 + scale) + shift
    key, value = attn.norm_k(attn.to_k(normed)), attn.to_v(normed)
    key = apply_rotary_emb(key, rope)
    return key.unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1))


def block_body(
    block: torch.nn.Module,
    hidden: torch.Tensor,
    temb: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    text_kv_pair: tuple[torch.Tensor, torch.Tensor],
    active: torch.Tensor | None = None,
    merge_kv: KVMerge | None = None,
    score_queries: list[torch.Tensor] | None = None,
    chunk: int = 1024,
    extras: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The block on `hidden`: all tokens (`active` None) or the `active` subset (see `wan_blocks.block_body`)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _modulation(block, temb, active)
    normed = block.norm1(hidden) * (1 + scale_msa) + shift_msa
    query, key, value = _self_qkv(block.attn1, normed, rope)
    scores = None
    if active is None:
        keys, values = key, value
        if score_queries:
            scores = torch.stack([key_attention_mass(query[b, g], key[b], chunk) for b, g in enumerate(score_queries)])
    else:
        keys, values = merge_kv(key, value)
        keys, values = keys.to(query.dtype), values.to(query.dtype)
    hidden = hidden + _attend(block.attn1, query, keys, values) * gate_msa
    text_mask = extras.get("text_mask") if extras else None
    hidden = hidden + _cross_attention(block.attn2, hidden, text_kv_pair, text_mask)
    normed = block.norm2(hidden) * (1 + scale_mlp) + shift_mlp
    return hidden + block.ff(normed) * gate_mlp, key, value, scores


register_block(
    LTXVideoTransformerBlock,
    BlockAdapter(
        kind=MAIN,
        arguments=LTX_ARGUMENTS,
        body=block_body,
        kv=block_kv,
        text_kv=text_kv,
        extra_roles=("text_mask",),
    ),
)
LTX = register_family(
    Family(
        name="ltx",
        classes=(LTXVideoTransformer3DModel.__name__,),
        fields=LTX_FIELDS,
        shape=ltx_shape,
        vae=lambda config: LTX_VAE,
        call_grid=ltx_call_grid,
        timestep_modulation=ltx_timestep_modulation,
        modulation_source="time_embed",
        layout=TransformerAdapter(
            main_blocks="transformer_blocks",
            vace_blocks=None,
            head="norm_out",
            head_input_dtype=None,
            text_embedder="caption_projection",
            text_output_index=None,
        ),
        processors=("LTXVideoAttnProcessor",),
        check=ltx_check,
        cfg_in_batch=True,
        text_len=128,  # T5 prompt tokens of LTXPipeline (max_sequence_length)
    )
)
