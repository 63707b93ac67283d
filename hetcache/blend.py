"""Latent blending (the `blend` contracts): outside the edit, every step, the source latents noised to the next sigma.

After each scheduler step the latents outside the latent edit mask are replaced by `σ·ε + (1 − σ)·x_src` — the
source latents noised to the sigma of the latents the scheduler returned, with the run's own initial noise ε (as
`FlowMatchEulerDiscreteScheduler.scale_noise` computes it; after the last step, the source itself). This is what
diffusers' inpaint pipelines and ComfyUI's inpainting sampler do. It is built as a wrapper of the pipeline's own
`scheduler.step` for one pipeline call (`blended`), not a forked pipeline, so it works for any pipeline whose loop
calls `self.scheduler.step` with a flow-matching scheduler of order 1: FlowMatchEulerDiscrete, and multistep ones
such as UniPCMultistep. For multistep schedulers the model output is also replaced outside the edit by the
velocity that leads to the source (`ε − x_src`), so the scheduler's history (x0 predictions, last sample) stays the
noised-source trajectory there; every solver step is elementwise, so the result inside is the same as blending the
returned latents alone.

The latent edit mask (`edit_mask`) is conservative: every latent cell any masked pixel touches (over its latent
frame's source frames), grown by the VAE's reach (`vae_reach`: how far a pixel change moves the latents), so no kept
cell encodes anything of the edit region. `soft` adds a ramp of the same width beyond it, released step by step
(differential diffusion: a cell of weight w is generated from step (1 − w)·N on). The pieces are pipeline-generic:
latents, a mask in latent space, the scheduler, and source latents from the pipeline's own video processor and VAE
(`source_latents`; the VAE's latent normalisation comes from `LATENT_NORMALISERS`, one entry per VAE class).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .engine.registry import pipeline_vae
from .errors import InputError
from .tokens import pool_frames_to_latent

PROBE_CELLS = 12  # side of the probe clip used to measure a VAE's reach, in latent cells
PROBE_GROUPS = 3  # latent frames after the first in the probe clip
REACH_TOLERANCE = 1e-4  # a latent cell counts as reached when it moves by this share of the largest change
DECODER_PROBE_FRAMES = 12  # latent frames of the probe a decoder's reach is measured on (a causal one reaches far)

_reaches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE → {measure: its reach}


# ---------------------------------------------------------------------------------------------------------
# source latents and the VAE's reach


def _wan_normalise(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Wan VAEs: (z − latents_mean) / latents_std, as the Wan pipelines normalise their latents."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=torch.float32).view(shape)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std, device=latents.device, dtype=torch.float32).view(shape)
    return (latents.float() - mean) * inverse_std


def _ltx_normalise(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """LTX-Video VAEs: (z − latents_mean) · scaling_factor / latents_std, as the LTX pipelines normalise theirs."""
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(latents.device, torch.float32)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(latents.device, torch.float32)
    return (latents.float() - mean) * vae.config.scaling_factor / std


# VAE class name → the latent normalisation its pipelines apply after encoding (another family adds its own entry)
LATENT_NORMALISERS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "AutoencoderKLWan": _wan_normalise,
    "AutoencoderKLLTXVideo": _ltx_normalise,
}


def vae_factors(pipe: Any) -> tuple[int, int]:
    """(temporal, spatial) compression of the pipeline's VAE."""
    strides = pipeline_vae(pipe)
    return int(strides.temporal), int(strides.spatial)


def _normaliser(vae: Any) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    name = type(vae).__name__
    if name not in LATENT_NORMALISERS:
        raise InputError(
            f"contract blend cannot encode source latents with a {name}: hetcache knows the latent normalisation of "
            f"{', '.join(LATENT_NORMALISERS)} only.",
            "use a pipeline with one of those VAEs, or a contract without blending (none, paste, feather).",
        )
    return LATENT_NORMALISERS[name]


@torch.no_grad()
def encode_video(pipe: Any, video: torch.Tensor) -> torch.Tensor:
    """Normalised latents of a preprocessed video [B, 3, F, H, W] in [−1, 1] (the distribution's mode, as the
    pipelines take it), in float32."""
    vae = pipe.vae
    normalise = _normaliser(vae)
    device = next(vae.parameters()).device
    latents = vae.encode(video.to(device, vae.dtype)).latent_dist.mode()
    return normalise(vae, latents)


@torch.no_grad()
def source_latents(pipe: Any, frames: np.ndarray) -> torch.Tensor:
    """The source clip's latents [1, C, T', H', W'] (float32) through the pipeline's own video processor and VAE."""
    video = pipe.video_processor.preprocess_video(
        [PIL.Image.fromarray(frame) for frame in frames], frames.shape[1], frames.shape[2]
    )
    return encode_video(pipe, video)


@torch.no_grad()
def measure_reach(pipe: Any, tolerance: float = REACH_TOLERANCE) -> tuple[int, int]:
    """How far a pixel change reaches into the VAE's latents: (latent frames, latent cells), Chebyshev distance.

    One latent cell's pixels (over one latent frame's source frames) of a random probe clip are changed; every latent
    cell that moves by more than `tolerance` of the largest change is reached. A reach that fills the probe is
    reported as the probe's extent (a VAE with global attention reaches everywhere a little).
    """
    temporal, spatial = vae_factors(pipe)
    frames, side = 1 + PROBE_GROUPS * temporal, PROBE_CELLS * spatial
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, frames, side, side, generator=gen) * 2 - 1
    changed = base.clone()
    t0, c0 = 1 + temporal, (PROBE_CELLS // 2) * spatial  # the pixels of latent frame 2, cell (6, 6)
    changed[:, :, t0 : t0 + temporal, c0 : c0 + spatial, c0 : c0 + spatial] *= -1
    moved = (encode_video(pipe, changed) - encode_video(pipe, base)).abs().amax(dim=(0, 1))  # [T', H', W']
    reached = (moved > tolerance * moved.max()).nonzero()
    centre = torch.tensor([2, PROBE_CELLS // 2, PROBE_CELLS // 2])
    distance = (reached - centre).abs()
    return int(distance[:, 0].max()), int(distance[:, 1:].max())


def vae_reach(pipe: Any) -> tuple[int, int]:
    """The pipeline VAE's reach (`measure_reach`), measured once per VAE."""
    return _once_per_vae(pipe, measure_reach)


@torch.no_grad()
def measure_decoder_reach(pipe: Any, tolerance: float = REACH_TOLERANCE) -> tuple[int, int]:
    """How far one latent cell reaches into the decoded pixels: (latent frames, latent cells), Chebyshev distance.

    One latent cell (frame 1, cell (6, 6)) of random probe latents is changed; every pixel that moves by more than
    `tolerance` of the largest change is reached, counted in the latent frames and cells its pixels belong to. A causal
    decoder reaches forward in time much further than its encoder reaches (the reference VAE: 1 latent frame encoding,
    6 decoding), so paste-back's latent mask (`paste_mask`) is grown by this. A reach that fills the probe is reported
    as the probe's extent.
    """
    vae = pipe.vae
    temporal, spatial = vae_factors(pipe)
    device = next(vae.parameters()).device
    channels = vae.config.get("z_dim") or vae.config.get("latent_channels")
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, channels, DECODER_PROBE_FRAMES, PROBE_CELLS, PROBE_CELLS, generator=gen)
    changed = base.clone()
    centre = PROBE_CELLS // 2
    changed[:, :, 1, centre, centre] += 3.0
    extra = {"temb": torch.zeros(1, device=device)} if vae.config.get("timestep_conditioning") else {}

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents.to(device, vae.dtype), **extra).sample.float()

    moved = (decode(changed) - decode(base)).abs().amax(dim=(0, 1))  # [F, H, W]
    pixels = (moved > tolerance * moved.max()).float().unsqueeze(0)
    cells = F.max_pool2d(pool_frames_to_latent(pixels, temporal), spatial)[0]  # [T', H', W']
    reached = cells.nonzero()
    distance = (reached - torch.tensor([1, centre, centre], device=reached.device)).abs()
    return int(distance[:, 0].max()), int(distance[:, 1:].max())


def decoder_reach(pipe: Any) -> tuple[int, int]:
    """The pipeline VAE decoder's reach (`measure_decoder_reach`), measured once per VAE."""
    return _once_per_vae(pipe, measure_decoder_reach)


def _once_per_vae(pipe: Any, measure: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
    """`measure(pipe)`, run once per VAE object (kept while the VAE lives)."""
    known = _reaches.setdefault(pipe.vae, {})
    if measure not in known:
        known[measure] = measure(pipe)
    return known[measure]


def paste_mask(pipe: Any, pixel_mask: np.ndarray, feather: int = 0) -> torch.Tensor:
    """The latent cells whose final values can reach a pixel paste-back keeps of the output: every cell the kept
    pixels (the mask, grown by the feather) touch, grown by the decoder's reach. Cells of weight 0 decode only to
    pixels pasted over, which is what lets the final step discard them (tokens.trim_discarded)."""
    from .paste import feather_alpha

    kept = (feather_alpha(pixel_mask, feather) > 0).numpy() if feather else np.asarray(pixel_mask)
    return edit_mask(kept, decoder_reach(pipe), *vae_factors(pipe))


# ---------------------------------------------------------------------------------------------------------
# the latent edit mask


def _grow(mask: torch.Tensor, frames: int, cells: int) -> torch.Tensor:
    """Max-pool a [1, 1, T, H, W] mask by ±frames, ±cells (Chebyshev dilation)."""
    kernel = (2 * frames + 1, 2 * cells + 1, 2 * cells + 1)
    return F.max_pool3d(mask, kernel, stride=1, padding=(frames, cells, cells))


def edit_mask(
    pixel_mask: np.ndarray | torch.Tensor,
    reach: tuple[int, int],
    temporal: int = 4,
    spatial: int = 8,
    soft: bool = False,
) -> torch.Tensor:
    """Latent edit weights [1, 1, T', H', W'] float32 from a pixel mask [F, H, W]: 1 on every latent cell a masked
    pixel touches, grown by `reach` (latent frames, latent cells); with `soft`, a ramp of `reach` beyond it
    ((R+1−d)/(R+1) at distance d), else 0 outside."""
    m = torch.as_tensor(np.asarray(pixel_mask)).float().unsqueeze(0)  # [1, F, H, W]
    touched = F.max_pool2d(pool_frames_to_latent(m, temporal), spatial).unsqueeze(1)  # [1, 1, T', H', W']
    region = _grow(touched, *reach)
    if not soft:
        return region
    weights, grown = region, region
    width = max(reach)
    for distance in range(1, width + 1):
        grown = _grow(grown, int(distance <= reach[0]), int(distance <= reach[1]))
        weights = torch.maximum(weights, grown * (1.0 - distance / (width + 1)))
    return weights


# ---------------------------------------------------------------------------------------------------------
# the scheduler-step wrapper


def check_scheduler(scheduler: Any) -> None:
    """Refuse, before any compute, a scheduler latent blending cannot follow: not flow matching, or of order > 1."""
    config = scheduler.config
    flow = (
        type(scheduler).__name__.startswith("FlowMatch")
        or config.get("use_flow_sigmas", False)
        or config.get("prediction_type") == "flow_prediction"
    )
    if not flow or getattr(scheduler, "order", 1) != 1 or getattr(scheduler, "sigmas", None) is None:
        why = "not a flow-matching scheduler" if not flow else "calls step more than once per timestep"
        raise InputError(
            f"contract blend cannot follow scheduler {type(scheduler).__name__} ({why}).",
            "use FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler with flow sigmas (the Wan default), "
            "or a contract without blending (none, paste, feather).",
        )


class LatentBlend:
    """`scheduler.step` for one pipeline call, blending the source outside the latent edit mask after every step.

    weights: latent edit weights [1, 1, T', H', W'] (1 = generate, 0 = keep the source; in between: released at step
    (1 − w)·N). The run's initial noise ε is the first step's sample, as text-to-video and Wan-VACE pipelines draw
    it (pure noise, whatever the first sigma); with `noised_start` (video-to-video pipelines, whose first sample is
    their encoded input noised to σ0) it is recovered from it: ε = (x − (1 − σ0)·x_src) / σ0. `pack` maps the
    source latents and weights [1, C, T', H', W'] to the layout of the pipeline's latents (LTX-Video packs them into
    tokens [1, T'·H'·W', C]); without it they are the pipeline's layout already.
    """

    def __init__(
        self,
        scheduler: Any,
        source: torch.Tensor,
        weights: torch.Tensor,
        soft: bool = False,
        noised_start: bool = False,
        pack: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        check_scheduler(scheduler)
        self.scheduler = scheduler
        self.inner = scheduler.step
        self.source = source
        self.weights = weights
        self.soft = soft
        self.noised_start = noised_start
        self.pack = pack
        self.kept: torch.Tensor | None = None  # the cells kept on every step (hard weights)
        self.noise: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.velocity: torch.Tensor | None = None  # ε − x_src: the flow-matching velocity that leads to the source
        self.calls = 0
        self.first_index = 0
        self.steps = 0

    def _start(self, timestep: Any, sample: torch.Tensor) -> None:
        scheduler = self.scheduler
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)
        self.first_index = int(scheduler.step_index)
        self.steps = len(scheduler.timesteps) - self.first_index
        if self.pack is not None:
            self.source, self.weights = self.pack(self.source), self.pack(self.weights)
        fits = tuple(self.source.shape[1:]) == tuple(sample.shape[1:]) and self.weights.dim() == sample.dim()
        if not fits or any(w not in (1, n) for w, n in zip(self.weights.shape, sample.shape, strict=True)):
            raise InputError(
                f"contract blend: the source latents {tuple(self.source.shape)} and edit mask "
                f"{tuple(self.weights.shape)} do not match the pipeline's latents {tuple(sample.shape)}.",
                "pass no reference images, and the clip at the size the pipeline generates.",
            )
        steps = len(scheduler.timesteps)
        sigmas = torch.cat([scheduler.sigmas[:steps].float().cpu(), torch.zeros(1)])  # after the last: the source
        first = float(sigmas[self.first_index])  # a host tensor: no device sync
        self.sigmas = sigmas.to(sample.device)
        self.source = self.source.to(sample.device, torch.float32)
        self.weights = self.weights.to(sample.device)
        x = sample.float()
        self.noise = (x - (1.0 - first) * self.source) / first if self.noised_start and first != 1.0 else x
        self.velocity = self.noise - self.source
        if not self.soft:
            self.kept = self.weights < 0.5

    def keep(self, call: int) -> torch.Tensor:
        """Cells kept from the source on the blend after the `call`-th step of the run (differential release)."""
        if self.kept is not None:
            return self.kept
        return (1.0 - self.weights) > call / self.steps

    def noised_source(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        """The source latents at the sigma of step index `index` (σ·ε + (1 − σ)·x_src, as scale_noise computes it)."""
        sigma = self.sigmas[index]
        return (sigma * self.noise + (1.0 - sigma) * self.source).to(dtype)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any):
        if self.calls == 0:
            self._start(timestep, sample)
        keep = self.keep(self.calls)
        velocity = torch.where(keep, self.velocity.to(model_output.dtype), model_output)
        result = self.inner(velocity, timestep, sample, *args, **kwargs)
        self.calls += 1
        prev = result[0] if isinstance(result, tuple) else result.prev_sample
        blended = torch.where(keep, self.noised_source(self.scheduler.step_index, prev.dtype), prev)
        if isinstance(result, tuple):
            return (blended, *result[1:])
        result.prev_sample = blended
        return result


@contextlib.contextmanager
def blended(
    pipe: Any,
    source: torch.Tensor,
    weights: torch.Tensor,
    soft: bool = False,
    noised_start: bool = False,
    pack: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[LatentBlend]:
    """Blend the source outside `weights` on every step of the one pipeline call made inside (`noised_start`: the
    pipeline starts from its input noised to the first sigma, as video-to-video pipelines do; `pack`: the pipeline's
    latent layout, see `LatentBlend`)."""
    blend = LatentBlend(pipe.scheduler, source, weights, soft, noised_start, pack)
    pipe.scheduler.step = blend.step
    try:
        yield blend
    finally:
        del pipe.scheduler.step
