"""Running a workload's clips through its pipeline under its editing contract: frames, final latents, timings.

Every run of a workload — the uncached reference and every cached run — follows the workload's contract
(hetcache.contracts): latent blending inside the denoising loop (hetcache.blend), paste-back on the decoded frames
(hetcache.paste). How a clip is passed to each pipeline class, and which timesteps a run takes, is `pipeline_kinds`'.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from .. import blend
from ..engine.trim import Discarded
from ..paste import composite
from .clips import Clip
from .pipeline_kinds import kind_of, mask_frames, painted_video
from .pipelines import load_clips, load_pipeline, load_prompt_embeds
from .spec import Workload


@dataclass
class Generation:
    """One pipeline call: decoded frames [F, H, W, 3] float32 in [0, 1] (pasted back when the contract says so),
    final latents (blended when it says so), timings (`paste_seconds`: the paste-back of the decoded frames)."""

    clip: str
    frames: np.ndarray | None
    latents: torch.Tensor
    denoise_seconds: float
    total_seconds: float
    paste_seconds: float = 0.0


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
    """The video (masked region painted grey, so the model never sees it) and mask as Wan-VACE takes them."""
    return painted_video(clip), mask_frames(clip)


class LoadedWorkload:
    """A loaded workload: its pipeline, prompt embeddings and reconciled clips, ready to generate under its contract."""

    def __init__(self, workload: Workload, pipe=None):
        self.workload = workload
        self.contract = workload.editing_contract
        self.pipe = pipe if pipe is not None else load_pipeline(workload)
        self.kind = kind_of(self.pipe)
        if self.contract.blend:
            blend.check_scheduler(self.pipe.scheduler)
        self.prompt_embeds, self.negative_prompt_embeds = load_prompt_embeds(workload, self.pipe)
        self.clips = load_clips(workload, self.pipe)
        self._conditioning: dict[str, torch.Tensor] = {}
        self._blend_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._paste_masks: dict[str, torch.Tensor] = {}

    def blend_inputs(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip's source latents and latent edit weights (hetcache.blend), computed once per clip."""
        if clip.name not in self._blend_inputs:
            temporal, spatial = blend.vae_factors(self.pipe)
            weights = blend.edit_mask(clip.mask, blend.vae_reach(self.pipe), temporal, spatial, self.contract.soft)
            self._blend_inputs[clip.name] = (blend.source_latents(self.pipe, clip.frames), weights)
        return self._blend_inputs[clip.name]

    def discarded(self, clip: Clip) -> Discarded | None:
        """What the workload's contract throws away of the transformer's output on this clip (for the discard trim,
        `tokens.trim_discarded`): under blending, outside the latent edit mask after every step; under paste-back
        alone, outside the cells that decode to kept pixels (`blend.paste_mask`) after the final step."""
        if self.contract.blend:
            return Discarded(self.blend_inputs(clip)[1], every_step=True)
        if self.contract.paste:
            if clip.name not in self._paste_masks:
                self._paste_masks[clip.name] = blend.paste_mask(self.pipe, clip.mask, self.contract.feather)
            return Discarded(self._paste_masks[clip.name], every_step=False)
        return None

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
        """The timesteps a run of this workload uses (a copy of the pipeline's scheduler, set as the pipeline does)."""
        size = tuple(self.clips[0].frames.shape[:3]) if self.clips else self.workload.synthetic_size()
        return self.kind.timesteps(self.pipe, self.workload.steps, size, self.workload.device)

    def engine_mask(self, clip: Clip) -> torch.Tensor | None:
        """The edit mask `apply_hetcache` is given for this pipeline: none for Wan-VACE (read from its control
        states), the clip's pixel mask otherwise."""
        return torch.from_numpy(clip.mask) if self.kind.engine_mask else None

    def _prompt_masks(self) -> dict[str, torch.Tensor]:
        """All-ones attention masks for the prompt embeddings, for pipelines that take them (LTX-Video)."""
        if not self.kind.prompt_masks:
            return {}
        device = self.prompt_embeds.device
        return {
            "prompt_attention_mask": torch.ones(self.prompt_embeds.shape[:2], device=device),
            "negative_prompt_attention_mask": torch.ones(self.negative_prompt_embeds.shape[:2], device=device),
        }

    def attach(self, clip: Clip, policy: Any, *, strict: bool = True, plan: str | None = None):
        """`apply_hetcache` on the pipeline the way every cached run of this workload attaches it: the clip's engine
        mask, and what the contract discards where the policy trims (`tokens.trim_discarded`)."""
        from ..engine import apply_hetcache
        from ..policy import load_policy

        policy = load_policy(policy)
        discarded = self.discarded(clip) if policy.tokens.trim_discarded else None
        return apply_hetcache(
            self.pipe, policy, mask=self.engine_mask(clip), strict=strict, plan=plan, discarded=discarded
        )

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
        with self.attach(clip, policy, strict=strict, plan=plan) as handle:
            generation = self.generate(clip, decode=decode, seed=seed)
            return generation, handle.stats()

    @torch.no_grad()
    def generate(self, clip: Clip, decode: bool = True, seed: int | None = None) -> Generation:
        """Run the pipeline on one clip under the workload's contract (masked region painted grey first, as an
        editing input)."""
        w = self.workload
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
            with contextlib.ExitStack() as stack:
                if self.kind.memoise_conditioning:
                    stack.enter_context(_memoized_conditioning(self.pipe, self._conditioning, clip.name))
                if self.contract.blend:
                    source, weights = self.blend_inputs(clip)
                    pack = self.kind.pack_latents and functools.partial(self.kind.pack_latents, self.pipe)
                    soft, noised = self.contract.soft, self.kind.noised_start
                    stack.enter_context(blend.blended(self.pipe, source, weights, soft, noised, pack))
                output = self.pipe(
                    **self.kind.arguments(clip),
                    **self._prompt_masks(),
                    prompt_embeds=self.prompt_embeds,
                    negative_prompt_embeds=self.negative_prompt_embeds,
                    height=clip.frames.shape[1],
                    width=clip.frames.shape[2],
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
        frames = np.asarray(output.frames[0], dtype=np.float32) if decode else None
        pasted = time.perf_counter()
        if frames is not None and self.contract.paste:
            frames = composite(frames, clip.frames, clip.mask, self.contract.feather)
        ended = time.perf_counter()
        return Generation(
            clip=clip.name,
            frames=frames,
            latents=captured["latents"],
            denoise_seconds=float(captured["end"] - captured["start"]),
            total_seconds=ended - started,
            paste_seconds=ended - pasted,
        )
