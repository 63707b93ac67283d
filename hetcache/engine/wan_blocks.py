"""Wan / Wan-VACE block math for full and partial computation, with the caches a partial step reads.

These functions restate diffusers' `WanTransformerBlock` / `WanVACETransformerBlock` forward (same operations, same
order, same dtypes) so that a full computation here equals the stock block, and split it so that a subset of the
tokens can be computed against cached keys and values of the others. Attention goes through diffusers'
`dispatch_attention_fn` with the processor's backend, so the user's attention backend still applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..attention_mass import key_attention_mass


@dataclass
class LayerCache:
    """Persistent buffers of one block in one cache context (allocated once, written in place)."""

    key: torch.Tensor | None = None  # [B, N, H, d] post-norm, post-RoPE self-attention keys (all tokens)
    value: torch.Tensor | None = None  # [B, N, H, d]
    skip: torch.Tensor | None = None  # [B, Nk, D] residual (or output) of the skippable tokens
    hint: torch.Tensor | None = None  # [B, N, D] VACE hint (conditioning states) of all tokens
    text: tuple[torch.Tensor, torch.Tensor] | None = None  # cross-attention K/V of the prompt
    text_epoch: int = -1

    def nbytes(self) -> int:
        tensors = [self.key, self.value, self.skip, self.hint, *(self.text or ())]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class Capture:
    """What the selection layer records on FULL steps for the next selection."""

    features: torch.Tensor | None = None  # [B, N, D] block output
    scores: torch.Tensor | None = None  # [B, N] attention mass of generative queries per key
    generative: list[torch.Tensor] = field(default_factory=list)  # per batch item: generative token indices
    chunk: int = 1024


def _modulation(block: torch.nn.Module, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if temb.ndim == 4:  # Wan2.2 TI2V: per-token modulation [B, N, 6, D]
        parts = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        return tuple(p.squeeze(2) for p in parts)
    return (block.scale_shift_table.to(temb.device) + temb.float()).chunk(6, dim=1)


def _rows(mod: tuple[torch.Tensor, ...], rows: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Per-token modulation restricted to `rows` (a no-op for the usual per-sample modulation)."""
    if rows is None or mod[0].ndim != 3 or mod[0].shape[1] == 1:
        return mod
    return tuple(m.index_select(1, rows) for m in mod)


def apply_rope(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (as in WanAttnProcessor)."""
    x1, x2 = hidden.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(hidden)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden)


def _backend(attn: torch.nn.Module):
    return getattr(attn.processor, "_attention_backend", None)


def _self_qkv(attn: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden).chunk(3, dim=-1)
    else:
        query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    query, key = attn.norm_q(query), attn.norm_k(key)
    return tuple(t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))


def text_kv(attn: torch.nn.Module, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention keys and values of the prompt (constant over a run)."""
    if getattr(attn, "fused_projections", False):
        key, value = attn.to_kv(text).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(text), attn.to_v(text)
    key = attn.norm_k(key)
    return key.unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1))


def _attend(attn: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    out = dispatch_attention_fn(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=_backend(attn)
    )
    out = out.flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out))


def _cross_attention(
    attn: torch.nn.Module, hidden: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    query = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
    return _attend(attn, query, *kv)


@dataclass
class Rows:
    """Token index sets of a PARTIAL step (shared by the batch)."""

    active: torch.Tensor  # [Nu] indices of computed tokens; the first `n_refresh` are skippable ones
    n_refresh: int  # computed tokens that are also skippable (their cache rows are refreshed)
    refresh_slots: torch.Tensor  # [n_refresh] their positions in the compact skip buffer
    skippable: torch.Tensor  # [Nk] indices of tokens that may be skipped (never generative)
    active_stored: torch.Tensor | None = None  # `active` and `refresh_slots` on the cache's storage device
    slots_stored: torch.Tensor | None = None
    cos: torch.Tensor | None = None  # RoPE tables at `active`, filled once per step
    sin: torch.Tensor | None = None


def block_body(
    block: torch.nn.Module,
    hidden: torch.Tensor,
    temb: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    text_kv_pair: tuple[torch.Tensor, torch.Tensor],
    rows: Rows | None = None,
    cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    capture: Capture | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block's three sub-layers on `hidden`: all tokens (rows None) or the `rows.active` subset.

    Partial: the fresh keys/values of the active tokens are written into `cached_kv` (device buffers holding every
    token's keys/values) in place, and the active queries attend over all N keys. Returns (output, fresh keys, fresh
    values) of the computed tokens, so the caller can store them.
    """
    shift, scale, gate, c_shift, c_scale, c_gate = _rows(
        _modulation(block, temb), None if rows is None else rows.active
    )
    attn = block.attn1
    normed = (block.norm1(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    query, key, value = _self_qkv(attn, normed)
    cos, sin = rope if rows is None else (rows.cos, rows.sin)
    query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
    if rows is None:
        keys, values = key, value
        if capture is not None and capture.generative:
            capture.scores = torch.stack(
                [key_attention_mass(query[b, g], key[b], capture.chunk) for b, g in enumerate(capture.generative)]
            )
    else:
        cached_kv[0].index_copy_(1, rows.active, key.to(cached_kv[0].dtype))
        cached_kv[1].index_copy_(1, rows.active, value.to(cached_kv[1].dtype))
        keys, values = cached_kv[0].to(query.dtype), cached_kv[1].to(query.dtype)
    attention = _attend(attn, query, keys, values)
    hidden = (hidden.float() + attention * gate).type_as(hidden)
    normed = block.norm2(hidden.float()).type_as(hidden)
    hidden = hidden + _cross_attention(block.attn2, normed, text_kv_pair)
    normed = (block.norm3(hidden.float()) * (1 + c_scale) + c_shift).type_as(hidden)
    return (hidden.float() + block.ffn(normed).float() * c_gate).type_as(hidden), key, value
