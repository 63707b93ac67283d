"""The token sets of the clip being generated: its classes (once per run) and the rows PARTIAL steps compute.

Both run outside the denoising step's hot path, on the device, with tensor ops; they sync a few times each (`nonzero`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..selection import active_tokens, select_context
from ..tokens import classify_tokens, pixel_mask_to_token_mask, strides_between
from .config import EngineConfig
from .state import Capture, ClipTokens, Rows


def clip_tokens(config: EngineConfig, mask: torch.Tensor | None, inputs: dict[str, Any]) -> ClipTokens:
    """Classify the clip's tokens from the explicit mask or from the inputs where the family holds one (Wan-VACE's
    control states)."""
    hidden = inputs["hidden_states"]
    family = config.family
    grid = family.call_grid(config.model_config, inputs)
    if grid is None:
        raise InputError(
            f"the {family.name} transformer was called without the inputs its token grid is read from.",
            "call it as its diffusers pipeline does (for LTX-Video: num_frames, height and width, or video_coords).",
        )
    tokens = hidden.shape[1] if hidden.ndim == 3 else math.prod(grid)
    if math.prod(grid) != tokens:
        raise InputError(
            f"the call holds {tokens} tokens but its video grid {grid} has {math.prod(grid)}: extra conditioning "
            "tokens (LTX conditions at frame_index > 0) are not classified by hetcache yet.",
            "condition at frame_index 0 only, or run this pipeline without hetcache.",
        )
    if mask is not None:
        token_mask = _explicit_token_mask(config, mask.to(hidden.device), grid)
    else:
        token_mask = family.mask_from_inputs(inputs, config.patch_size, config.mask_threshold)
    if token_mask is None:
        raise InputError(
            f"no edit mask: this {family.name} transformer has no VACE control states to read it from.",
            "pass mask= (pixel video mask [F, H, W] or token mask [T', h, w]) to apply_hetcache.",
        )
    if token_mask.shape[0] != hidden.shape[0]:
        token_mask = token_mask.expand(hidden.shape[0], *token_mask.shape[1:])
    classes = classify_tokens(token_mask, config.margin_width, config.margin_frames)
    generative_any = classes.generative.any(dim=0)
    skippable_mask = ~generative_any
    generative_union = generative_any.nonzero().squeeze(1)
    n_generative = generative_union.numel()
    reason = None
    if n_generative == 0:
        reason = "empty mask: no generative tokens, PARTIAL steps run full (timestep-level reuse only)"
    elif n_generative == classes.num_tokens:
        reason = "full mask: every token is generative, PARTIAL steps cannot save tokens"
    return ClipTokens(
        classes=classes,
        skippable=skippable_mask.nonzero().squeeze(1),
        skippable_mask=skippable_mask,
        compact_slot=torch.cumsum(skippable_mask.long(), 0) - 1,
        generative_union=generative_union,
        generative_per_item=[classes.generative[b].nonzero().squeeze(1) for b in range(classes.generative.shape[0])],
        no_token_savings=reason,
    )


def _explicit_token_mask(config: EngineConfig, mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) == grid:
        return mask.bool()
    strides = strides_between(tuple(mask.shape[1:]), grid, config.patch_size)
    if strides is None:
        expected = config.family.pixel_size(config.model_config, grid)
        raise InputError(
            f"mask of shape {tuple(mask.shape)} matches neither the token grid {grid} nor its pixel size "
            f"({expected[0]} frames x {expected[1]} x {expected[2]} with the {config.family.name} VAE).",
            "pass the pixel mask of the clip being generated, or a token mask of the token grid.",
        )
    return pixel_mask_to_token_mask(mask, strides, config.patch_size, config.mask_threshold)


def partial_rows(config: EngineConfig, clip: ClipTokens, capture: Capture) -> Rows:
    """The tokens PARTIAL steps compute until the next refresh: generative ∪ margin picks ∪ context picks.

    The count depends only on the clip and the policy's ratios, so shapes stay fixed within a run.
    """
    choice = select_context(
        clip.classes,
        config.context_ratio,
        config.selection,
        features=capture.features if config.capture_features else None,
        scores=capture.scores if config.capture_scores else None,
        clusters=config.clusters,
        seed=config.seed,
    )
    active = active_tokens(clip.classes, config.margin_ratio, choice).any(dim=0)
    refresh = (active & clip.skippable_mask).nonzero().squeeze(1)
    skipped = (~active).nonzero().squeeze(1)
    active_rows = torch.cat([refresh, clip.generative_union])
    slots = clip.compact_slot[refresh]
    stored = (lambda t: t.cpu()) if config.offload else (lambda t: t)
    return Rows(
        active=active_rows,
        n_refresh=refresh.numel(),
        refresh_slots=slots,
        skippable=clip.skippable,
        skipped=skipped,
        active_stored=stored(active_rows),
        slots_stored=stored(slots),
    )
