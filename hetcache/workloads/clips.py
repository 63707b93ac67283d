"""Deterministic synthetic clips with edit masks: textured, drifting backgrounds with moving shapes.

They are the reference workload's calibration set and the reference model's training data. Each clip is an RGB
uint8 video [F, H, W, 3] with a binary mask [F, H, W] (1 = region to generate) of one of the kinds below.
MASK_KINDS are the calibration and training kinds; SMALL_MASK_KINDS cover a few percent of the frame (where
token-level caching can save most) and serve held-out evaluations only, so neither tuning nor training changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

MASK_KINDS = ("box", "ellipse", "moving", "band", "two_regions")
SMALL_MASK_KINDS = ("small_box", "small_moving")
CLIP_KINDS = MASK_KINDS + SMALL_MASK_KINDS  # every kind `synthetic_clip` makes
# share of the frame a small kind's mask covers in every frame (by construction, up to pixel rounding)
SMALL_MASK_AREA = {"small_box": (0.03, 0.06), "small_moving": (0.04, 0.08)}


@dataclass
class Clip:
    """A video and its edit mask, with notes on how they were produced or reconciled."""

    name: str
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    mask: np.ndarray  # [F, H, W] bool, True = generate
    notes: list[str] = field(default_factory=list)
    fps: float = 16.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.frames.shape[:3]

    def painted(self, value: int = 127) -> np.ndarray:
        """The frames with the masked region painted flat, so a model never sees what it must regenerate."""
        out = self.frames.copy()
        out[self.mask] = value
        return out


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(torch.rand((), generator=gen)) * (high - low) + low


def _scene(gen: torch.Generator, frames: int, height: int, width: int) -> tuple[torch.Tensor, list[dict]]:
    """Background of drifting plane waves plus 1–3 moving disks/squares; returns video [F, H, W, 3] in [0, 1]."""
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    video = torch.rand(3, generator=gen).view(1, 1, 1, 3) * 0.5 + 0.25
    video = video.expand(frames, height, width, 3).clone()
    for _ in range(3):
        period = _uniform(gen, 24.0, 96.0)
        angle = _uniform(gen, 0.0, 2 * math.pi)
        speed = _uniform(gen, -2.0, 2.0)
        phase = _uniform(gen, 0.0, 2 * math.pi)
        k = 2 * math.pi / period
        wave = torch.cos(k * (math.sin(angle) * y + math.cos(angle) * x - speed * t) + phase)
        colour = (torch.rand(3, generator=gen) - 0.5) * 0.3
        video += wave.unsqueeze(-1) * colour
    objects = []
    scale = min(height, width)
    for _ in range(int(torch.randint(1, 4, (), generator=gen))):
        obj = {
            "cy": _uniform(gen, 0.2, 0.8) * height,
            "cx": _uniform(gen, 0.2, 0.8) * width,
            "vy": _uniform(gen, -1.0, 1.0) * scale / 64,
            "vx": _uniform(gen, -1.0, 1.0) * scale / 64,
            "r": _uniform(gen, 0.06, 0.14) * scale,
            "square": bool(torch.rand((), generator=gen) < 0.5),
        }
        cy, cx = obj["cy"] + obj["vy"] * t, obj["cx"] + obj["vx"] * t
        dy, dx = (y - cy).abs(), (x - cx).abs()
        dist = torch.maximum(dy, dx) if obj["square"] else torch.sqrt(dy**2 + dx**2)
        alpha = torch.sigmoid((obj["r"] - dist) / 1.5).unsqueeze(-1)
        colour = torch.rand(3, generator=gen).view(1, 1, 1, 3)
        video = video * (1 - alpha) + alpha * colour
        objects.append(obj)
    return video.clamp(0, 1), objects


def _mask(kind: str, gen: torch.Generator, frames: int, height: int, width: int, objects: list[dict]) -> torch.Tensor:
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(height, dtype=torch.float32).view(1, height, 1) + 0.5
    x = torch.arange(width, dtype=torch.float32).view(1, 1, width) + 0.5
    zeros = torch.zeros(frames, height, width, dtype=torch.bool)

    def box(cy: float, cx: float, hh: float, hw: float) -> torch.Tensor:
        return zeros | (((y - cy).abs() <= hh) & ((x - cx).abs() <= hw))

    if kind == "box":
        hh, hw = _uniform(gen, 0.18, 0.3) * height, _uniform(gen, 0.18, 0.3) * width
        return box(_uniform(gen, hh, height - hh), _uniform(gen, hw, width - hw), hh, hw)
    if kind == "ellipse":
        ry, rx = _uniform(gen, 0.18, 0.3) * height, _uniform(gen, 0.18, 0.3) * width
        cy, cx = _uniform(gen, ry, height - ry), _uniform(gen, rx, width - rx)
        return zeros | ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1.0)
    if kind == "moving":
        obj = objects[0]
        radius = obj["r"] * 1.6
        cy, cx = obj["cy"] + obj["vy"] * t, obj["cx"] + obj["vx"] * t
        return ((y - cy) ** 2 + (x - cx) ** 2) <= radius**2
    if kind == "band":
        half = max(4.0, _uniform(gen, 0.04, 0.07) * height)
        cy = _uniform(gen, 0.25, 0.75) * height
        return box(cy, width / 2, half, 0.42 * width)
    if kind == "two_regions":
        hh, hw = 0.14 * height, 0.12 * width
        first = box(_uniform(gen, 0.2, 0.8) * height, _uniform(gen, 0.15, 0.3) * width, hh, hw)
        second = box(_uniform(gen, 0.2, 0.8) * height, _uniform(gen, 0.7, 0.85) * width, hh, hw)
        return first | second
    if kind == "small_box":  # a fixed box of 2·[0.09, 0.12] of each side: 3.2–5.8 % of the frame
        hh, hw = _uniform(gen, 0.09, 0.12) * height, _uniform(gen, 0.09, 0.12) * width
        return box(_uniform(gen, hh, height - hh), _uniform(gen, hw, width - hw), hh, hw)
    if kind == "small_moving":  # an ellipse of π·[0.115, 0.16]² of the frame (4.2–8 %) on the first object's path
        obj, share = objects[0], _uniform(gen, 0.115, 0.16)
        ry, rx = share * height, share * width
        cy = (obj["cy"] + obj["vy"] * t).clamp(ry, height - ry)  # kept inside the frame, so the area stays put
        cx = (obj["cx"] + obj["vx"] * t).clamp(rx, width - rx)
        return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1.0
    raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(CLIP_KINDS)}")


def synthetic_clip(kind: str, seed: int, num_frames: int = 17, height: int = 256, width: int = 256) -> Clip:
    """One deterministic clip of `kind` (one of CLIP_KINDS) for `seed`."""
    gen = torch.Generator().manual_seed(seed)
    video, objects = _scene(gen, num_frames, height, width)
    mask = _mask(kind, gen, num_frames, height, width, objects)
    frames = (video * 255.0 + 0.5).to(torch.uint8).numpy()
    return Clip(name=f"{kind}-{seed}", frames=frames, mask=mask.numpy(), notes=[f"synthetic {kind}, seed {seed}"])


def calibration_clips(
    num_frames: int = 17, height: int = 256, width: int = 256, kinds: tuple[str, ...] = MASK_KINDS, seed: int = 0
) -> list[Clip]:
    """The reference workload's calibration set: one clip per mask kind, fixed seeds."""
    return [synthetic_clip(kind, seed + 101 * i, num_frames, height, width) for i, kind in enumerate(kinds)]
