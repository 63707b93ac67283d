"""Wan / Wan-VACE block maths for full and partial computation (the caches themselves live in cache_buffers.py).

These functions restate diffusers' `WanTransformerBlock` / `WanVACETransformerBlock` forward (same operations, same
order, same dtypes) so that a full computation here equals the stock block, and split it so that a subset of the
tokens can be computed against cached keys and values of the others. Attention goes through diffusers'
`dispatch_attention_fn` with the processor's backend, so the user's attention backend still applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..attention_mass import key_attention_mass


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


def _self_kv(attn: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention keys (normed) and values only: a fused projection is applied through its K/V rows alone."""
    if getattr(attn, "fused_projections", False):
        weight, bias = attn.to_qkv.weight, attn.to_qkv.bias
        inner = weight.shape[0] // 3
        key, value = F.linear(hidden, weight[inner:], None if bias is None else bias[inner:]).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(hidden), attn.to_v(hidden)
    key = attn.norm_k(key)
    return key.unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1))


def block_kv(
    block: torch.nn.Module,
    hidden: torch.Tensor,
    temb: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention keys (post-norm, post-RoPE) and values of the tokens `rows` from their block input `hidden`
    [B, len(rows), D] and `rope` at those rows: the block's first norm, modulation and K/V projections, nothing else."""
    shift, scale = _rows(_modulation(block, temb), rows)[:2]
    normed = (block.norm1(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    key, value = _self_kv(block.attn1, normed)
    return apply_rope(key, *rope), value


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


KVMerge = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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
    """The block's three sub-layers on `hidden`: all tokens (`active` None) or the `active` subset.

    Partial: `rope` holds the tables at the active rows and `merge_kv(fresh keys, fresh values)` returns the keys
    and values of all N tokens (the caller's cache, refreshed at the active rows), which the active queries attend
    over. Full: with `score_queries` (per batch item, query token indices) the attention mass each key receives
    from them is returned too. Returns (output, fresh keys, fresh values, scores or None). Wan takes no `extras`.
    """
    shift, scale, gate, c_shift, c_scale, c_gate = _rows(_modulation(block, temb), active)
    attn = block.attn1
    normed = (block.norm1(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    query, key, value = _self_qkv(attn, normed)
    cos, sin = rope
    query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
    scores = None
    if active is None:
        keys, values = key, value
        if score_queries:
            scores = torch.stack([key_attention_mass(query[b, g], key[b], chunk) for b, g in enumerate(score_queries)])
    else:
        keys, values = merge_kv(key, value)
        keys, values = keys.to(query.dtype), values.to(query.dtype)
    attention = _attend(attn, query, keys, values)
    hidden = (hidden.float() + attention * gate).type_as(hidden)
    normed = block.norm2(hidden.float()).type_as(hidden)
    hidden = hidden + _cross_attention(block.attn2, normed, text_kv_pair)
    normed = (block.norm3(hidden.float()) * (1 + c_scale) + c_shift).type_as(hidden)
    out = (hidden.float() + block.ffn(normed).float() * c_gate).type_as(hidden)
    return out, key, value, scores


def vace_project_in(block: torch.nn.Module, control: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The stream a VACE block transforms: the control states (the first block adds them to the hidden states)."""
    return block.proj_in(control) + hidden if block.proj_in is not None else control


def vace_project_out(block: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The hint a VACE block adds to the main stream."""
    return block.proj_out(out)
