"""Quality of a cached output against the uncached output of the same pipeline, seed and inputs.

PSNR and windowed SSIM (11x11 Gaussian, σ = 1.5, as scikit-image with `gaussian_weights=True`) over the whole
frame and per region — inside the mask, the margin band around it, the background, and the seam (a band across the
mask's edge, `SEAM_BAND` pixels each side: where a paste-back shows) — plus the latent relative L2. LPIPS only with
weights the user supplies (see `hetcache.lpips`); otherwise it is reported as unavailable. Under a contract that
pastes or blends the source back (hetcache.contracts), whole-frame PSNR is a function of the mask's area: the
headline there is `psnr_mask` and `psnr_seam`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0  # dB reported for identical outputs (JSON has no infinity)
REGIONS = ("frame", "mask", "margin", "background", "seam")
MARGIN_BAND = 16  # pixels of the margin region outside the mask
SEAM_BAND = 8  # pixels each side of the mask's edge in the seam region

# metric name → whether higher is better; names are what --budget accepts.
METRICS: dict[str, bool] = {
    "psnr": True,
    "psnr_mask": True,
    "psnr_margin": True,
    "psnr_background": True,
    "ssim": True,
    "ssim_mask": True,
    "ssim_margin": True,
    "ssim_background": True,
    "psnr_seam": True,
    "ssim_seam": True,
    "latent_rel_l2": False,
    "lpips": False,
}


def bound_range(metric: str) -> tuple[float, float, bool]:
    """(low, high, low_open) of the bounds a budget on `metric` can meaningfully set (outside: met by every output
    or by none): PSNR in (0, PSNR_CAP] dB, SSIM in (0, 1], latent relative L2 in [0, inf), LPIPS in [0, 1]."""
    if metric.startswith("psnr"):
        return 0.0, PSNR_CAP, True
    if metric.startswith("ssim"):
        return 0.0, 1.0, True
    return 0.0, (math.inf if metric == "latent_rel_l2" else 1.0), False


def check_bound(metric: str, value: float) -> str | None:
    """Why `value` is no meaningful bound for `metric` (None when it is one)."""
    low, high, low_open = bound_range(metric)
    if (value <= low if low_open else value < low) or value > high:
        shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if math.isinf(high) else ']'}"
        return f"{metric} takes values in {shown}, so a bound of {value:g} is met by every output or by none"
    return None


def _as_float_video(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] uint8 or float in [0, 1] → float64 tensor [F, 3, H, W] in [0, 1]."""
    t = torch.as_tensor(np.asarray(frames))
    t = t.double() / 255.0 if t.dtype == torch.uint8 else t.double()
    return t.permute(0, 3, 1, 2)


def psnr(reference: torch.Tensor, test: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """PSNR in dB (data range 1) over all pixels, or over `region` [F, H, W]; capped at PSNR_CAP."""
    err = (reference - test) ** 2
    if region is not None:
        weight = region.unsqueeze(1).expand_as(err).double()
        if weight.sum() == 0:
            return float("nan")
        mse = float((err * weight).sum() / weight.sum())
    else:
        mse = float(err.mean())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else -10.0 * math.log10(mse)


def video_psnr(reference_frames: np.ndarray, test_frames: np.ndarray) -> float:
    """Whole-frame PSNR of two videos [F, H, W, 3] (uint8, or float in [0, 1])."""
    return psnr(_as_float_video(reference_frames), _as_float_video(test_frames))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-D Gaussian; the 2-D SSIM window is its outer product (applied as two 1-D passes)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(reference: torch.Tensor, test: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM [F, H−10, W−10] (mean over channels), valid convolution like scikit-image."""
    c1, c2 = 0.01**2, 0.03**2
    frames, channels = reference.shape[:2]
    x = reference.reshape(frames * channels, 1, *reference.shape[2:])
    y = test.reshape(frames * channels, 1, *test.shape[2:])
    g = _gaussian_window(size, sigma).to(reference.dtype)
    # One batched, separable pass over x, y, x², y², xy (the same sums as a 2-D window, 2·size taps instead of size²).
    stacked = F.conv2d(F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    mu_x, mu_y, exx, eyy, exy = stacked.chunk(5)
    # scikit-image rescales the Gaussian-weighted variances by N/(N-1) only with sample covariance; not here.
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.view(frames, channels, *s.shape[2:]).mean(dim=1)


def _ssim_over(smap: torch.Tensor, region: torch.Tensor | None) -> float:
    """Mean of an SSIM map over all pixels, or over `region` pixels (borders cropped like the map)."""
    if region is None:
        return float(smap.mean())
    pad = (region.shape[-1] - smap.shape[-1]) // 2
    inner = region[:, pad : pad + smap.shape[1], pad : pad + smap.shape[2]]
    if inner.sum() == 0:
        return float("nan")
    return float(smap[inner].mean())


def ssim(reference: torch.Tensor, test: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """Mean windowed SSIM over frames (or over `region` pixels of the SSIM map, borders cropped)."""
    return _ssim_over(ssim_map(reference, test), region)


def _grown(mask: torch.Tensor, band: int) -> torch.Tensor:
    """Pixels within `band` (Chebyshev) of the mask [F, H, W] bool, per frame."""
    return F.max_pool2d(mask.float().unsqueeze(1), 2 * band + 1, stride=1, padding=band).squeeze(1) > 0.5


def regions(mask: np.ndarray | torch.Tensor, band: int = MARGIN_BAND, seam: int = SEAM_BAND) -> dict[str, torch.Tensor]:
    """Pixel regions of a clip [F, H, W] bool: the mask, a `band`-pixel margin around it, the background, and the
    seam: pixels within `seam` of the mask's edge, on either side."""
    m = torch.as_tensor(np.asarray(mask)).bool()
    grown = _grown(m, band)
    seam_band = _grown(m, seam) & _grown(~m, seam)
    return {"mask": m, "margin": grown & ~m, "background": ~grown, "seam": seam_band}


def latent_rel_l2(reference: torch.Tensor, test: torch.Tensor) -> float:
    """‖test − reference‖ / ‖reference‖ over the final latents."""
    return float((test.double() - reference.double()).norm() / reference.double().norm().clamp(min=1e-12))


def clip_quality(
    reference_frames: np.ndarray,
    test_frames: np.ndarray,
    mask: np.ndarray,
    reference_latents: torch.Tensor | None = None,
    test_latents: torch.Tensor | None = None,
    lpips=None,
    band: int = MARGIN_BAND,
) -> dict[str, float | str]:
    """Every metric of METRICS for one clip; region metrics of an empty region are NaN."""
    ref, out = _as_float_video(reference_frames), _as_float_video(test_frames)
    parts = regions(mask, band)
    smap = ssim_map(ref.float(), out.float()).double()  # float32 halves the cost; within 2e-6 of float64
    result: dict[str, float | str] = {"psnr": psnr(ref, out), "ssim": _ssim_over(smap, None)}
    for name, region in parts.items():
        result[f"psnr_{name}"] = psnr(ref, out, region)
        result[f"ssim_{name}"] = _ssim_over(smap, region)
    if reference_latents is not None and test_latents is not None:
        result["latent_rel_l2"] = latent_rel_l2(reference_latents, test_latents)
    result["lpips"] = "unavailable" if lpips is None else lpips.video_distance(ref.float(), out.float())
    return result


def mean_quality(per_clip: list[dict[str, float | str]]) -> dict[str, float | str]:
    """Mean of each metric over clips (NaNs ignored); 'unavailable' stays unavailable."""
    out: dict[str, float | str] = {}
    for key in per_clip[0]:
        values = [q[key] for q in per_clip if isinstance(q.get(key), (int, float)) and not math.isnan(q[key])]
        out[key] = float(np.mean(values)) if values else per_clip[0][key]
    return out


def worst_quality(per_clip: list[dict[str, float | str]]) -> dict[str, float | str]:
    """The worst value of each metric over clips (lowest for higher-is-better metrics)."""
    out: dict[str, float | str] = {}
    for key in per_clip[0]:
        values = [q[key] for q in per_clip if isinstance(q.get(key), (int, float)) and not math.isnan(q[key])]
        if not values:
            out[key] = per_clip[0][key]
        else:
            out[key] = float(min(values) if METRICS.get(key, True) else max(values))
    return out
