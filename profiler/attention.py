"""Attention contribution: observe the Q/K a self-attention passes to torch's SDPA, without changing its output.

A `TorchFunctionMode` is entered only around recorded self-attention calls; it lets every op run as it would and,
on the first `scaled_dot_product_attention` call, hands query and key ([B, H, S, d]) to a callback that reduces them
to the attention mass per key in query chunks (`hetcache.attention_mass.key_attention_mass`, never N×N).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hetcache.attention_mass import key_attention_mass


def _sdpa_signature(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):  # pragma: no cover - signature only
    """Mirror of torch.nn.functional.scaled_dot_product_attention's parameters, for binding calls."""


SDPA_SIGNATURE = inspect.signature(_sdpa_signature)


class SDPAObserver(TorchFunctionMode):
    """Calls `callback(arguments)` for each SDPA call (or only the first one); every op runs unchanged."""

    def __init__(self, callback: Callable[[dict], None], first_only: bool = True):
        super().__init__()
        self.callback = callback
        self.first_only = first_only
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention and not (self.first_only and self.calls):
            self.calls += 1
            self.callback(SDPA_SIGNATURE.bind(*args, **kwargs).arguments)
        return output


def generative_key_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    item: int,
    query_offset: int,
    query_index: torch.Tensor | None,
    chunk: int,
    scale: float | None,
) -> torch.Tensor:
    """Attention mass [Sk] that the chosen video queries of batch item `item` put on every key (mean over heads).

    query [B, H, Sq, d], key [B, Hk, Sk, d] as SDPA gets them; video queries start at `query_offset` (joint
    text+video attention puts text first); `query_index` selects among them (None: all).
    """
    q = query[item, :, query_offset:]
    if query_index is not None:
        q = q.index_select(1, query_index)
    k = key[item]
    if k.shape[0] != q.shape[0]:  # grouped-query attention: each key head serves several query heads
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    return key_attention_mass(q.transpose(0, 1), k.transpose(0, 1), chunk=chunk, scale=scale)


def transient_bytes(heads: int, chunk: int, keys: int) -> int:
    """Peak extra memory of one chunked mass computation: about three float32 H·chunk·N buffers (scores, scaled
    scores, probabilities), as measured by benchmarks/profiler.py."""
    return 3 * heads * chunk * keys * 4
