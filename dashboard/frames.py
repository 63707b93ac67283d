"""Frame-level views of a run: difference images, mask tint, and per-frame PSNR with hetcache's own metrics."""

from __future__ import annotations

import numpy as np
import torch

from hetcache.metrics import psnr, regions

MASK_TINT = np.array([255.0, 64.0, 64.0])


def difference(reference: np.ndarray, test: np.ndarray, gain: float) -> np.ndarray:
    """|test − reference| of one frame, amplified by `gain` and clipped to uint8."""
    diff = np.abs(test.astype(np.int16) - reference.astype(np.int16)).astype(np.float32) * gain
    return np.clip(diff, 0, 255).astype(np.uint8)


def tint(frame: np.ndarray, mask: np.ndarray, strength: float = 0.35) -> np.ndarray:
    """The frame with the masked (generated) region tinted red."""
    alpha = mask.astype(np.float32)[..., None] * strength
    return (frame.astype(np.float32) * (1 - alpha) + MASK_TINT * alpha).astype(np.uint8)


def _as_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] → float64 [F, 3, H, W] in [0, 1], the layout hetcache.metrics takes."""
    return torch.from_numpy(frames).double().div(255.0).permute(0, 3, 1, 2)


def frame_psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None) -> dict[str, list[float]]:
    """PSNR (dB) per frame over the whole frame and, with a mask, per region (hetcache.metrics.psnr/regions)."""
    ref, out = _as_video(reference), _as_video(test)
    series = {"frame": [psnr(ref[i : i + 1], out[i : i + 1]) for i in range(ref.shape[0])]}
    if mask is not None and mask.shape == reference.shape[:3]:
        for name, region in regions(mask).items():
            series[name] = [psnr(ref[i : i + 1], out[i : i + 1], region[i : i + 1]) for i in range(ref.shape[0])]
    return series
