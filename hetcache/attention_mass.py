"""Attention mass per key from a set of queries, computed in query chunks (never an N×N matrix).

Used for context selection (engine) and attention contribution (profiler): s_j = mean_h Σ_i softmax_j(q_i·k_j/√d)
over all N keys — the full softmax, so scores differ between keys (unlike the reference code's score ≡ 1).
"""

from __future__ import annotations

import math

import torch


def key_attention_mass(
    query: torch.Tensor, key: torch.Tensor, chunk: int = 1024, scale: float | None = None
) -> torch.Tensor:
    """query [Nq, H, d], key [N, H, d] → [N] float32: attention mass the queries put on each key, mean over heads.

    Peak extra memory is H·chunk·N floats.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    total = torch.zeros(key.shape[0], device=key.device, dtype=torch.float32)
    keys = key.float().transpose(0, 1)  # [H, N, d]
    for start in range(0, query.shape[0], chunk):
        q = query[start : start + chunk].float().transpose(0, 1)  # [H, c, d]
        probs = torch.softmax(torch.bmm(q, keys.transpose(1, 2)) * scale, dim=-1)  # [H, c, N]
        total += probs.sum(dim=1).mean(dim=0)
    return total
