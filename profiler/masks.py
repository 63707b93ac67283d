"""Token classes of a profiled clip: from a pixel or token mask, or read back from Wan-VACE control states."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hetcache.engine.registry import find_family
from hetcache.errors import InputError
from hetcache.tokens import TokenClasses, classify_tokens, pixel_mask_to_token_mask, strides_between

VACE_CONTROL_CHANNELS = 96


def as_mask_tensor(mask: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """A binary mask as a float tensor [F, H, W] (a leading batch axis of 1 is dropped)."""
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise InputError(f"{what} has shape {tuple(tensor.shape)}.", "pass a mask [frames, height, width].")
    tensor = tensor.float()
    if not bool((tensor > 0.5).any()):
        raise InputError(
            f"{what} is empty (no pixel marked for generation).",
            "pass a mask with the region to edit, or profile without a mask (drift, step curve and cost still work).",
        )
    return tensor


def token_mask_from_pixels(
    transformer: torch.nn.Module, mask: torch.Tensor, grid: tuple[int, int, int], threshold: float = 0.0
) -> torch.Tensor:
    """Pixel (or token) mask [F, H, W] → token mask [1, T', h, w] on the transformer's token grid.

    A mask already on the token grid is used as is. Otherwise frames and patches map as the pipeline's VAE maps them
    (`hetcache.tokens`, with the strides the mask and grid sizes imply: the family's for its released VAE); for a
    transformer no family adapter knows, the mask is max-pooled onto the grid (a token is generative if any pixel is).
    """
    if tuple(mask.shape) == tuple(grid):
        return (mask > 0.5).unsqueeze(0)
    family = find_family(transformer)
    if family is None:
        token_mask = F.adaptive_max_pool3d((mask > 0.5).float()[None, None], grid)[0] > 0.5
    else:
        patch = family.shape(transformer.config).patch
        strides = strides_between(tuple(mask.shape), grid, patch)
        if strides is None:
            raise InputError(
                f"the mask does not fit the video: a mask of {tuple(mask.shape)} maps onto no whole number of the "
                f"model's {tuple(grid)} tokens.",
                "pass a mask the size of the video.",
            )
        token_mask = pixel_mask_to_token_mask(mask.unsqueeze(0), strides, patch, threshold)
    if tuple(token_mask.shape[1:]) != tuple(grid):
        raise InputError(
            f"the mask maps to a token grid {tuple(token_mask.shape[1:])}, but the model runs on {tuple(grid)}.",
            "pass a mask with the video's frame count and size.",
        )
    return token_mask


def control_token_mask(transformer: torch.nn.Module, control: torch.Tensor | None) -> torch.Tensor | None:
    """The token mask [B, T', h, w] a family reads from a call's inputs (Wan-VACE: `control_hidden_states`)."""
    family = find_family(transformer)
    if control is None or family is None or control.ndim != 5 or control.shape[1] != VACE_CONTROL_CHANNELS:
        return None
    return family.mask_from_inputs({"control_hidden_states": control}, family.shape(transformer.config).patch, 0.0)


def classes_from_token_mask(token_mask: torch.Tensor, margin_width: int, what: str) -> TokenClasses:
    """Generative / margin / context classes of batch item 0; an empty mask is refused."""
    classes = classify_tokens(token_mask[:1].bool(), margin_width=margin_width)
    if not bool(classes.generative.any()):
        raise InputError(
            f"{what} is empty (no generative token).",
            "pass a mask with the region to edit, or profile without a mask (drift, step curve and cost still work).",
        )
    return classes
