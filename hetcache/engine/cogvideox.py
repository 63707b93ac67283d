"""CogVideoX as the profiler reads it: token grid, VAE strides, timestep modulation. No block maths yet.

The engine refuses it (`Family.layout` is None) with a message pointing here. What running it would take, beyond
this file: CogVideoX concatenates the prompt tokens with the video tokens into one sequence that every block's
self-attention runs over (no cross-attention) and returns both streams, so (1) `BlockAdapter.body` would compute the
text rows every step (they are never skipped: a token class of their own, always active) and the video rows
partially, (2) `stream_out` takes the video part of the (video, text) pair, (3) the K/V cache holds text + video
keys and the cost model counts attention over L + N keys with no cross-attention term, (4) there is no separate
text embedder whose output the `TextHook` could precompute K/V from. Steps 1–3 fit this file; step 4 needs the hooks
to let a family opt out of the prompt K/V (a flag on the layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..tokens import VaeStrides
from .registry import Family, ModelShape, register_family

COGVIDEOX_VAE = VaeStrides(temporal=4, spatial=8)


def cogvideox_shape(config: Mapping[str, Any]) -> ModelShape:
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    p = config["patch_size"]
    return ModelShape(
        heads=config["num_attention_heads"],
        head_dim=config["attention_head_dim"],
        ffn_dim=4 * dim,
        num_layers=config["num_layers"],
        num_vace_layers=0,
        patch=(config.get("patch_size_t") or 1, p, p),
        in_channels=config["in_channels"],
        out_channels=config.get("out_channels") or config["in_channels"],
        text_dim=config["text_embed_dim"],
        freq_dim=dim,
    )


def cogvideox_call_grid(config: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(T', h, w) of latents [B, F, C, H, W]; frames grouped by `patch_size_t` when it is set (CogVideoX 1.5)."""
    hidden = inputs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 5:
        return None
    _, frames, _, height, width = hidden.shape
    p, pt = config["patch_size"], config.get("patch_size_t")
    return ((frames + pt - 1) // pt if pt else frames, height // p, width // p)


@torch.no_grad()
def cogvideox_timestep_modulation(transformer: torch.nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The time embedding [S, time_embed_dim] every block's adaptive norms read."""
    parameter = next(transformer.time_embedding.parameters())
    t = torch.as_tensor(timesteps, device=parameter.device).flatten()
    return transformer.time_embedding(transformer.time_proj(t).to(parameter.dtype)).float()


COGVIDEOX = register_family(
    Family(
        name="cogvideox",
        classes=("CogVideoXTransformer3DModel",),
        fields=("num_layers", "num_attention_heads", "attention_head_dim", "patch_size", "patch_size_t", "in_channels"),
        shape=cogvideox_shape,
        vae=lambda config: COGVIDEOX_VAE,
        call_grid=cogvideox_call_grid,
        timestep_modulation=cogvideox_timestep_modulation,
        modulation_source="time_embedding",
        text_len=226,
    )
)
