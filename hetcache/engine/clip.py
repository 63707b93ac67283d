"""The token sets of the clip being generated: its classes (once per run) and the rows PARTIAL steps compute.

Both run outside the denoising step's hot path, on the device, with tensor ops; they sync a few times each (`nonzero`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..selection import active_tokens, select_context
from ..tokens import classify_tokens, pixel_mask_to_token_mask, token_mask_from_control
from .config import EngineConfig
from .state import Capture, ClipTokens, Rows


def clip_tokens(config: EngineConfig, mask: torch.Tensor | None, inputs: dict[str, Any]) -> ClipTokens:
    """Classify the clip's tokens from the explicit mask or, for Wan-VACE, from the control states."""
    hidden = inputs["hidden_states"]
    grid = tuple(s // p for s, p in zip(hidden.shape[2:], config.patch_size, strict=True))
    if mask is not None:
        token_mask = _explicit_token_mask(config, mask.to(hidden.device), grid)
    elif inputs.get("control_hidden_states") is not None:
        token_mask = token_mask_from_control(inputs["control_hidden_states"], config.patch_size, config.mask_threshold)
    else:
        raise InputError(
            "no edit mask: this transformer has no VACE control states to read it from.",
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
    patch = config.patch_size
    pixel_grid = (mask.shape[-2] // (8 * patch[1]), mask.shape[-1] // (8 * patch[2]))
    if pixel_grid != grid[1:] or (mask.shape[1] - 1) // 4 + 1 != grid[0]:
        raise InputError(
            f"mask of shape {tuple(mask.shape)} matches neither the token grid {grid} nor its pixel size "
            f"({(grid[0] - 1) * 4 + 1} frames x {grid[1] * 16} x {grid[2] * 16}).",
            "pass the pixel mask of the clip being generated, or a token mask of the token grid.",
        )
    return pixel_mask_to_token_mask(mask, patch, config.mask_threshold)


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
