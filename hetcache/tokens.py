"""Token classes from an edit mask: generative (in the mask), margin (near it) and context (the rest).

Mapping (docs/method.md, "Token classes"): pixel mask → latent frames by max over each latent frame's source frames
(a causal video VAE: frame 0 → latent 0, frames s(k−1)+1 … sk → latent k for a temporal stride s) → token grid by the
share of masked pixels in each token's patch (> `threshold`; 0 = any masked pixel). The strides are the family's
(`hetcache.engine.registry.Family.vae`): Wan 4 × 8 × 8, LTX-Video 8 × 32 × 32. Everything runs on the mask's device,
once per clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class VaeStrides:
    """A causal video VAE's compression: pixel frames per latent frame (after the first) and pixels per latent cell."""

    temporal: int
    spatial: int


def strides_between(
    pixel_size: tuple[int, int, int], grid: tuple[int, int, int], patch: tuple[int, int, int]
) -> VaeStrides | None:
    """The VAE strides that map a clip of `pixel_size` (F, H, W) onto the token grid `grid` with this patch, or None
    when no whole-number strides do (the mask is not the clip's size, nor a whole-frame rescale of it).

    A pipeline's own VAE decides the latent size, so the strides are read from the sizes rather than assumed: the
    released VAEs give their family's strides (Wan 4 × 8, LTX-Video 8 × 32), a test's tiny VAE gives its own.
    """
    frames, height, width = pixel_size
    latent_frames = grid[0] * patch[0]
    cell_h, cell_w = grid[1] * patch[1], grid[2] * patch[2]
    if height % cell_h or width % cell_w or height // cell_h != width // cell_w:
        return None
    if latent_frames == 1:  # a causal VAE encodes one pixel frame alone
        return VaeStrides(temporal=1, spatial=height // cell_h) if frames == 1 else None
    if frames < latent_frames or (frames - 1) % (latent_frames - 1):
        return None
    return VaeStrides(temporal=(frames - 1) // (latent_frames - 1), spatial=height // cell_h)


def latent_frame_count(num_frames: int, temporal_factor: int) -> int:
    """Number of latent frames of a clip of `num_frames` pixel frames (sk+1 → k+1 for a temporal stride s)."""
    return (num_frames - 1) // temporal_factor + 1


def pool_frames_to_latent(mask: torch.Tensor, temporal_factor: int) -> torch.Tensor:
    """Max over each latent frame's source frames: [B, F, H, W] → [B, T', H, W] (F = sk+1 for a stride s)."""
    first = mask[:, :1]
    rest = mask[:, 1:]
    if rest.shape[1] == 0:
        return first
    usable = rest.shape[1] // temporal_factor * temporal_factor
    groups = rest[:, :usable].unflatten(1, (-1, temporal_factor)).amax(dim=2)
    if usable < rest.shape[1]:  # a trailing partial group still maps to one more latent frame
        groups = torch.cat([groups, rest[:, usable:].amax(dim=1, keepdim=True)], dim=1)
    return torch.cat([first, groups], dim=1)


def pixel_mask_to_latent_mask(mask: torch.Tensor, strides: VaeStrides) -> torch.Tensor:
    """Latent cells touched by the mask (conservative: any masked pixel): [F, H, W] → [1, 1, T', H/s, W/s] float."""
    latent = pool_frames_to_latent(mask.float().unsqueeze(0), strides.temporal)
    return F.max_pool2d(latent, strides.spatial).unsqueeze(1)


def pixel_mask_to_token_mask(
    mask: torch.Tensor, strides: VaeStrides, patch_size: tuple[int, int, int], threshold: float = 0.0
) -> torch.Tensor:
    """Binary pixel mask [B, F, H, W] (or [F, H, W]) → token mask [B, T', h, w] (bool, 1 = generative).

    A token is generative when the share of masked pixels of its patch, over its latent frame's source frames,
    exceeds `threshold` (0 → any masked pixel: the conservative mapping).
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    m = pool_frames_to_latent((mask > 0.5).float(), strides.temporal)
    if patch_size[0] > 1:
        m = F.max_pool3d(m.unsqueeze(1), (patch_size[0], 1, 1)).squeeze(1)
    ph, pw = strides.spatial * patch_size[1], strides.spatial * patch_size[2]
    if m.shape[-2] % ph or m.shape[-1] % pw:
        raise ValueError(f"mask size {tuple(m.shape[-2:])} is not a multiple of the token patch {ph}x{pw} pixels")
    coverage = F.avg_pool2d(m.flatten(0, 1), (ph, pw)).unflatten(0, m.shape[:2])
    return coverage > threshold


def _disk(radius: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) <= radius**2).float()


@dataclass
class TokenClasses:
    """Per-token classes of one clip batch; boolean tensors are [B, N] in the transformer's token order."""

    generative: torch.Tensor
    margin: torch.Tensor
    context: torch.Tensor
    grid: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return self.generative.shape[1]

    def counts(self) -> dict[str, list[int]]:
        """Token count per class and batch item (host ints; one device sync)."""
        stacked = torch.stack([self.generative, self.margin, self.context]).sum(dim=2).cpu().tolist()
        return dict(zip(("generative", "margin", "context"), stacked, strict=True))

    def labels(self) -> torch.Tensor:
        """Class id per token [B, N]: 0 context, 1 margin, 2 generative."""
        return self.margin.long() + 2 * self.generative.long()


def classify_tokens(token_mask: torch.Tensor, margin_width: int = 2, margin_frames: int = 0) -> TokenClasses:
    """Split tokens into generative / margin / context from a token mask [B, T', h, w].

    Margin = tokens within `margin_width` tokens (Euclidean, same latent frame) of a generative token, optionally
    widened by ±`margin_frames` latent frames, and not generative themselves. A frame with no generative token
    gets no margin from itself.
    """
    if token_mask.ndim == 3:
        token_mask = token_mask.unsqueeze(0)
    gen = token_mask.bool()
    batch, frames, h, w = gen.shape
    near = gen.clone()
    if margin_width > 0:
        kernel = _disk(margin_width, gen.device).view(1, 1, 2 * margin_width + 1, 2 * margin_width + 1)
        hits = F.conv2d(gen.float().view(batch * frames, 1, h, w), kernel, padding=margin_width)
        near = hits.view(batch, frames, h, w) > 0.5
    if margin_frames > 0:
        k = 2 * margin_frames + 1
        near = F.max_pool3d(near.float().unsqueeze(1), (k, 1, 1), stride=1, padding=(margin_frames, 0, 0))
        near = near.squeeze(1) > 0.5
    margin = near & ~gen
    context = ~(gen | margin)
    flat = lambda t: t.reshape(batch, -1)  # noqa: E731
    return TokenClasses(flat(gen), flat(margin), flat(context), (frames, h, w))
