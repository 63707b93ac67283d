"""Profiling a pipeline that is not a masked editor under the workload's contract (Wan T2V without blending,
CogVideoX, LTX-Video, …) from a saved folder: prompt embeddings instead of a text encoder, no mask (drift and
attention cover all tokens)."""

from __future__ import annotations

import inspect

import torch

from hetcache.dtypes import torch_dtype
from hetcache.errors import InputError
from hetcache.workloads.pipeline_kinds import edits_masked_video
from hetcache.workloads.pipelines import pipeline_class
from hetcache.workloads.pipelines import read_prompt_embeds as read_embeddings_file
from hetcache.workloads.spec import Workload

from .families import transformer_of
from .run import ClipRun


def is_generic(workload: Workload) -> bool:
    """Whether the workload's pipeline is a local folder that does not edit a masked video under its contract."""
    if workload.is_reference:
        return False
    name = pipeline_class(workload.pipeline)
    return name is not None and not edits_masked_video(name, workload.editing_contract)


def read_prompt_embeds(path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_embeds and negative_prompt_embeds from --prompt-embeds (required: no text encoder is loaded)."""
    if not path:
        raise InputError(
            "profiling a pipeline without a text encoder needs prompt embeddings.",
            "pass --prompt-embeds FILE (safetensors/torch with 'prompt_embeds' and 'negative_prompt_embeds').",
        )
    return read_embeddings_file(path)


def generic_runs(workload: Workload) -> tuple[object, list[ClipRun]]:
    """Load the folder's pipeline (no text encoder) and one text-to-video run of the workload's size and steps."""
    from diffusers import DiffusionPipeline

    if workload.clips and any(c.video for c in workload.clips):
        raise InputError(
            f"pipeline '{workload.pipeline}' is a {pipeline_class(workload.pipeline)}, which takes no video and mask.",
            "drop --video/--mask (the profiler records all tokens), or use a Wan-VACE pipeline for masked editing.",
        )
    dtype = torch_dtype(workload.dtype)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            workload.pipeline, text_encoder=None, tokenizer=None, torch_dtype=dtype
        )
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load pipeline '{workload.pipeline}' ({str(exc).splitlines()[0]}).",
            "pass a local folder written by save_pretrained.",
        ) from exc
    transformer_of(pipe)
    pipe.to(workload.device)
    pipe.set_progress_bar_config(disable=True)
    positive, negative = (t.to(workload.device, dtype) for t in read_prompt_embeds(workload.prompt_embeds))
    parameters = inspect.signature(pipe.__call__).parameters
    kwargs = dict(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=workload.steps,
        guidance_scale=workload.guidance_scale,
        output_type="latent",
    )
    size = {"height": workload.height, "width": workload.width, "num_frames": workload.num_frames}
    kwargs.update({key: value for key, value in size.items() if value is not None})  # else the pipeline's defaults
    if "prompt_attention_mask" in parameters:  # LTX-style pipelines want masks next to the embeddings
        kwargs["prompt_attention_mask"] = torch.ones(positive.shape[:2], device=workload.device)
        kwargs["negative_prompt_attention_mask"] = torch.ones(negative.shape[:2], device=workload.device)

    def call() -> None:
        pipe(**kwargs, generator=torch.Generator(device="cpu").manual_seed(workload.seed))

    return pipe, [ClipRun(name="text-to-video", steps=workload.steps, mask=None, call=call)]
