"""Running a workload's clips through its pipeline: edited frames, final latents and timings per clip."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from .clips import Clip
from .pipelines import load_clips, load_pipeline, load_prompt_embeds
from .spec import Workload


@dataclass
class Generation:
    """One pipeline call: decoded frames [F, H, W, 3] float32 in [0, 1], final latents, timings."""

    clip: str
    frames: np.ndarray | None
    latents: torch.Tensor
    denoise_seconds: float
    total_seconds: float


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _memoized_conditioning(pipe, cache: dict, key: str) -> Iterator[None]:
    """Reuse the VAE-encoded conditioning of a clip across calls (it depends only on the clip)."""
    original = pipe.prepare_video_latents

    def cached(*args, **kwargs):
        if key not in cache:
            cache[key] = original(*args, **kwargs)
        return cache[key]

    pipe.prepare_video_latents = cached
    try:
        yield
    finally:
        del pipe.prepare_video_latents


def pipeline_inputs(clip: Clip) -> tuple[list[PIL.Image.Image], list[PIL.Image.Image]]:
    """The video (masked region painted grey, so the model never sees it) and mask as the pipeline takes them."""
    video = [PIL.Image.fromarray(frame) for frame in clip.painted()]
    mask = [PIL.Image.fromarray(m.astype(np.uint8) * 255, mode="L") for m in clip.mask]
    return video, mask


class LoadedWorkload:
    """A loaded workload: its pipeline, prompt embeddings and reconciled clips, ready to generate."""

    def __init__(self, workload: Workload, pipe=None):
        self.workload = workload
        self.pipe = pipe if pipe is not None else load_pipeline(workload)
        self.prompt_embeds, self.negative_prompt_embeds = load_prompt_embeds(workload, self.pipe)
        self.clips = load_clips(workload)
        self._conditioning: dict[str, torch.Tensor] = {}

    @property
    def transformer(self):
        return self.pipe.transformer

    def clip(self, name: str) -> Clip:
        for clip in self.clips:
            if clip.name == name:
                return clip
        raise KeyError(name)

    def summary(self) -> dict:
        """The workload's summary for policy files, with the size of the clips actually run."""
        summary = self.workload.summary()
        for key, size in zip(("num_frames", "height", "width"), self.clips[0].frames.shape[:3], strict=True):
            summary[key] = summary[key] or size
        return summary

    def timesteps(self) -> torch.Tensor:
        """The timesteps a run of this workload uses (from a copy of the pipeline's scheduler)."""
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(self.workload.steps, device=self.workload.device)
        return scheduler.timesteps

    def generate_cached(
        self,
        clip: Clip,
        policy: Any,
        *,
        strict: bool = True,
        plan: str | None = None,
        decode: bool = True,
        seed: int | None = None,
    ) -> tuple[Generation, dict[str, Any]]:
        """One run of `clip` with `policy` attached to the pipeline (removed afterwards, also on error).

        Returns the generation and the engine's stats of the run (`HetCacheHandle.stats`). Every cached run of a
        workload (tuner trials, `hetcache run`, the reference evaluation, the benchmarks) goes through here.
        """
        from ..engine import apply_hetcache

        with apply_hetcache(self.pipe, policy, strict=strict, plan=plan) as handle:
            generation = self.generate(clip, decode=decode, seed=seed)
            return generation, handle.stats()

    @torch.no_grad()
    def generate(self, clip: Clip, decode: bool = True, seed: int | None = None) -> Generation:
        """Run the pipeline on one clip (masked region painted grey first, as an editing input)."""
        w = self.workload
        video, mask = pipeline_inputs(clip)
        captured: dict[str, float | torch.Tensor] = {}

        def first_call(module, args):
            if "start" not in captured:
                _sync(w.device)
                captured["start"] = time.perf_counter()

        def on_step_end(pipe, step, timestep, tensors):
            if step == w.steps - 1:
                _sync(w.device)
                captured["end"] = time.perf_counter()
                captured["latents"] = tensors["latents"].detach().float().cpu()
            return {}

        handles = [self.pipe.transformer.register_forward_pre_hook(first_call)]
        started = time.perf_counter()
        try:
            with _memoized_conditioning(self.pipe, self._conditioning, clip.name):
                output = self.pipe(
                    video=video,
                    mask=mask,
                    prompt_embeds=self.prompt_embeds,
                    negative_prompt_embeds=self.negative_prompt_embeds,
                    height=clip.frames.shape[1],
                    width=clip.frames.shape[2],
                    num_frames=clip.frames.shape[0],
                    num_inference_steps=w.steps,
                    guidance_scale=w.guidance_scale,
                    generator=torch.Generator(device="cpu").manual_seed(w.seed if seed is None else seed),
                    output_type="np" if decode else "latent",
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
        finally:
            for handle in handles:
                handle.remove()
        _sync(w.device)
        total = time.perf_counter() - started
        frames = np.asarray(output.frames[0], dtype=np.float32) if decode else None
        return Generation(
            clip=clip.name,
            frames=frames,
            latents=captured["latents"],
            denoise_seconds=float(captured["end"] - captured["start"]),
            total_seconds=total,
        )
