"""Paste-back in pixels: the source outside the mask, the edit inside, hard or with an edge feathered outward.

`composite(output, source, mask, feather)` = `alpha·output + (1 − alpha)·source` with alpha = 1 on the mask (the edit
region is never touched), falling linearly to 0 over `feather` pixels outside it (Chebyshev distance, per frame),
0 beyond. With `feather = 0` it is the hard paste of the HetCache reference code, `source·(1−m) + output·m`: every
pixel outside the mask equals the source exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def feather_alpha(mask: np.ndarray | torch.Tensor, feather: int) -> torch.Tensor:
    """Per-pixel weight of the output [F, H, W] float32: 1 on the mask, (N+1−d)/(N+1) at d ≤ N pixels outside it."""
    grown = torch.as_tensor(np.asarray(mask)).bool().unsqueeze(1)  # [F, 1, H, W]
    alpha = grown.float()
    for distance in range(1, feather + 1):
        ring = F.max_pool2d(grown.float(), 3, stride=1, padding=1) > 0.5
        alpha = torch.where(ring & ~grown, torch.tensor(1.0 - distance / (feather + 1)), alpha)
        grown = ring
    return alpha.squeeze(1)


def composite(output: np.ndarray, source: np.ndarray, mask: np.ndarray, feather: int = 0) -> np.ndarray:
    """The output pasted onto the source: frames [F, H, W, 3] float in [0, 1] (source may be uint8), mask [F, H, W]."""
    src = source.astype(np.float32) / 255.0 if source.dtype == np.uint8 else source.astype(np.float32, copy=False)
    inside = np.asarray(mask, dtype=bool)[..., None]
    if feather == 0:
        return np.where(inside, output, src).astype(np.float32, copy=False)
    alpha = feather_alpha(mask, feather).numpy()[..., None]
    blended = alpha * output + (1.0 - alpha) * src
    return np.where(inside, output, blended).astype(np.float32, copy=False)
