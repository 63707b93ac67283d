"""The pipelines a workload can run, by class: how a clip is passed, which timesteps a run takes, what the engine
needs to be told, and under which editing contracts (hetcache.contracts) the class edits a masked video.

- `WanVACEPipeline`: masked video editing under every contract; the video (masked region painted grey) and the mask
  are its inputs, and the engine reads the mask back from the VACE control states.
- `WanPipeline` (text-to-video) and `WanVideoToVideoPipeline` (at strength 1, so every planned step runs; its first
  latents are the video noised to σ0): they take no mask, so they edit a masked video only by latent blending
  (`blend`, `blend+paste`); the engine is given the mask.
- `LTXPipeline`: text-to-video; the clip gives the size and the edit mask, which the engine is given explicitly
  (`apply_hetcache(..., mask=)`): PARTIAL steps recompute the masked region and a margin. Outside the mask the
  output is the model's own, not the source: keeping the source there is an editing contract's job (paste-back,
  or latent blending of its packed latents), not this table's.
- `LTXConditionPipeline`: the same, with the clip's first frame as a hard condition at frame 0 (its latent frame
  is denoised with timestep 0: LTX's per-token timesteps). It runs under `none`, `paste` and `feather`; latent
  blending is not built for it (its scheduler steps per-token timesteps and its first latents hold the condition).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..contracts import Contract
from ..engine.registry import pipeline_vae
from ..errors import InputError, UnsupportedModelError
from ..video import Constraints
from .clips import Clip


def painted_video(clip: Clip) -> list[PIL.Image.Image]:
    """The clip's frames with the masked region painted grey (the model never sees what it is to generate)."""
    return [PIL.Image.fromarray(frame) for frame in clip.painted()]


def mask_frames(clip: Clip) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(m.astype(np.uint8) * 255, mode="L") for m in clip.mask]


VIDEO_TO_VIDEO_STRENGTH = 1.0  # the whole schedule, so every step the engine plans is run


def _frames(clip: Clip) -> int:
    return clip.frames.shape[0]


def _vace_arguments(clip: Clip) -> dict[str, Any]:
    return {"video": painted_video(clip), "mask": mask_frames(clip), "num_frames": _frames(clip)}


def _text_to_video_arguments(clip: Clip) -> dict[str, Any]:
    return {"num_frames": _frames(clip)}


def _video_to_video_arguments(clip: Clip) -> dict[str, Any]:
    """The painted video at strength 1 (its frame count is the video's: no num_frames)."""
    return {"video": painted_video(clip), "strength": VIDEO_TO_VIDEO_STRENGTH}


def _first_frame_condition(clip: Clip) -> dict[str, Any]:
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    first = PIL.Image.fromarray(clip.painted()[0])
    return {"conditions": [LTXVideoCondition(image=first, frame_index=0, strength=1.0)], "num_frames": _frames(clip)}


def _ltx_pack(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """[1, C, T', H', W'] latents (or edit weights) as LTX-Video's packed tokens [1, T'·H'·W', C·p_t·p·p]."""
    return pipe._pack_latents(latents, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)


def _scheduler_copy(pipe: Any):
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


def _default_timesteps(pipe: Any, steps: int, size: tuple[int, int, int], device: str) -> torch.Tensor:
    scheduler = _scheduler_copy(pipe)
    scheduler.set_timesteps(steps, device=device)
    return scheduler.timesteps


def _ltx_timesteps(pipe: Any, steps: int, size: tuple[int, int, int], device: str) -> torch.Tensor:
    """As `LTXPipeline` sets them: sigmas 1 … 1/steps, shifted by the sequence length (diffusers' calculate_shift)."""
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    frames, height, width = size
    vae = pipeline_vae(pipe)
    tokens = ((frames - 1) // vae.temporal + 1) * (height // vae.spatial) * (width // vae.spatial)
    config = pipe.scheduler.config
    mu = calculate_shift(
        tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    scheduler = _scheduler_copy(pipe)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=device, mu=mu)
    return scheduler.timesteps


def _ltx_condition_timesteps(pipe: Any, steps: int, size: tuple[int, int, int], device: str) -> torch.Tensor:
    """As `LTXConditionPipeline` sets them: LTX's linear-quadratic schedule."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import linear_quadratic_schedule

    scheduler = _scheduler_copy(pipe)
    scheduler.set_timesteps(timesteps=(linear_quadratic_schedule(steps) * 1000).tolist(), device=device)
    return scheduler.timesteps


@dataclass(frozen=True)
class PipelineKind:
    """How hetcache runs one pipeline class on a workload's clips."""

    name: str
    arguments: Callable[[Clip], dict[str, Any]]  # the clip as the pipeline takes it
    timesteps: Callable[[Any, int, tuple[int, int, int], str], torch.Tensor]  # (pipe, steps, (F, H, W), device)
    engine_mask: bool  # the engine is given the clip's mask (else it reads it from the pipeline's inputs)
    prompt_masks: bool = False  # the pipeline wants attention masks next to the prompt embeddings
    memoise_conditioning: bool = False  # Wan-VACE: the clip's VAE-encoded conditioning is reused across calls
    blends: bool = True  # latent blending (hetcache.blend) works on its latents
    blend_only: bool = False  # takes no mask and keeps no source: a masked editor only under a blend contract
    noised_start: bool = False  # its first latents are the input video noised to σ0 (video-to-video)
    pack_latents: Callable[[Any, torch.Tensor], torch.Tensor] | None = None  # (pipe, [1, C, T, H, W]) → its layout

    def check_contract(self, contract: Contract, source: str) -> None:
        """Refuse a contract under which this pipeline class cannot edit a masked video."""
        if self.blend_only and not contract.blend:
            raise InputError(
                f"pipeline '{source}' is a {self.name}, which takes no mask: it edits a masked video only by latent "
                f"blending, not under contract {contract}.",
                "pass --contract blend (or blend+paste), or point --pipeline at a Wan-VACE pipeline.",
            )
        if contract.blend and not self.blends:
            raise InputError(
                f"contract {contract} needs latent blending, which hetcache does not do for {self.name} yet.",
                "pass --contract paste or --contract feather:N (paste-back after decoding), or --contract none.",
            )


KINDS: dict[str, PipelineKind] = {
    kind.name: kind
    for kind in (
        PipelineKind(
            "WanVACEPipeline", _vace_arguments, _default_timesteps, engine_mask=False, memoise_conditioning=True
        ),
        PipelineKind("WanPipeline", _text_to_video_arguments, _default_timesteps, engine_mask=True, blend_only=True),
        PipelineKind(
            "WanVideoToVideoPipeline",
            _video_to_video_arguments,
            _default_timesteps,
            engine_mask=True,
            blend_only=True,
            noised_start=True,
        ),
        PipelineKind(
            "LTXPipeline",
            _text_to_video_arguments,
            _ltx_timesteps,
            engine_mask=True,
            prompt_masks=True,
            pack_latents=_ltx_pack,
        ),
        PipelineKind(
            "LTXConditionPipeline",
            _first_frame_condition,
            _ltx_condition_timesteps,
            engine_mask=True,
            prompt_masks=True,
            blends=False,
        ),
    )
}
SUPPORTED_PIPELINES = tuple(KINDS)


def kind_named(class_name: str, source: str = "") -> PipelineKind:
    """The kind of a pipeline class, or a clear error naming the ones hetcache runs."""
    if class_name not in KINDS:
        where = f"pipeline '{source}' is a {class_name}" if source else f"{class_name} is not a pipeline hetcache runs"
        raise UnsupportedModelError(
            f"{where}; hetcache runs workloads with {', '.join(SUPPORTED_PIPELINES)}.",
            "point --pipeline at a Wan-VACE or LTX-Video pipeline folder, a Wan text-to-video or video-to-video one "
            "under --contract blend (profile other pipelines with hetcache-profile).",
        )
    return KINDS[class_name]


def kind_of(pipe: Any) -> PipelineKind:
    return kind_named(type(pipe).__name__)


def edits_masked_video(class_name: str | None, contract: Contract) -> bool:
    """Whether a pipeline of `class_name` runs as a masked editor under `contract`."""
    kind = KINDS.get(class_name)
    return kind is not None and not (kind.blend_only and not contract.blend) and (kind.blends or not contract.blend)


def clip_constraints(pipe: Any, height: int | None, width: int | None, num_frames: int | None) -> Constraints:
    """What a clip must be for this pipeline: frames ≡ 1 (mod the VAE's temporal stride), sizes multiples of one
    token's pixels (Wan 16, LTX-Video 32)."""
    from ..engine.registry import model_shape

    vae, patch = pipeline_vae(pipe), model_shape(pipe.transformer).patch
    return Constraints(
        temporal=vae.temporal,
        spatial=vae.spatial * max(patch[1], patch[2]),
        height=height,
        width=width,
        num_frames=num_frames,
    )
