"""Building the pipeline, prompt embeddings and clips a workload names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import reference
from ..dtypes import torch_dtype
from ..engine.registry import model_shape
from ..errors import InputError
from ..video import Constraints, load_clip, reconcile
from .clips import Clip, synthetic_clip
from .pipeline_kinds import clip_constraints, kind_named
from .spec import Workload


def pipeline_class(source: str | Path) -> str | None:
    """The `_class_name` of a local pipeline folder's model_index.json (None for a hub id or a folder without one);
    the one reader of that file."""
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"'{index}' cannot be read as JSON ({exc}).", "re-save the pipeline with save_pretrained."
        ) from None
    return data.get("_class_name") if isinstance(data, dict) else None


def load_pipeline(workload: Workload):
    """The pipeline a workload names (Wan-VACE or LTX-Video, `pipeline_kinds`), on its device and dtype, with the
    progress bar off."""
    import diffusers
    from diffusers import WanVACEPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()

    dtype = torch_dtype(workload.dtype)
    if workload.is_reference and workload.weights == "random":
        pipe = WanVACEPipeline(
            vae=reference.random_vae(),
            transformer=reference.random_transformer(),
            scheduler=reference.scheduler(),
            text_encoder=None,
            tokenizer=None,
        )
        if dtype != torch.float32:
            pipe.transformer.to(dtype)
    else:
        source = str(reference.MODEL_DIR) if workload.is_reference else workload.pipeline
        if workload.is_reference:
            reference.verify()
        class_name = pipeline_class(source) or WanVACEPipeline.__name__  # a hub id: a Wan-VACE pipeline
        kind_named(class_name, source).check_contract(workload.editing_contract, source)
        try:
            pipe = getattr(diffusers, class_name).from_pretrained(
                source, text_encoder=None, tokenizer=None, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot load pipeline '{source}' ({str(exc).splitlines()[0]}).",
                "pass a local folder written by save_pretrained, or a hub id that is already in the local cache.",
            ) from exc
    if workload.shift is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift=workload.shift)
    pipe.to(workload.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_prompt_embeds(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_embeds and negative_prompt_embeds from a safetensors or torch file (zeros when no negative).

    The format is told by the file's first bytes (`preflight.prompt_embeds_format`), whatever its suffix; a file that
    cannot be read, lacks 'prompt_embeds' or holds a non-finite value is refused naming the file.
    """
    from ..preflight import prompt_embeds_format

    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt embeddings '{path}' do not exist.", "check the --prompt-embeds path.")
    fix = "save a dict with 'prompt_embeds' [1, L, D] (and 'negative_prompt_embeds') with safetensors or torch.save."
    try:
        if prompt_embeds_format(path) == "safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            with path.open("rb") as handle:  # a handle, not the path: torch.load reads a .safetensors path as one
                tensors = torch.load(handle, map_location="cpu", weights_only=True)
        positive, negative = tensors["prompt_embeds"], tensors.get("negative_prompt_embeds")
    except InputError:
        raise
    except Exception as exc:  # safetensors, pickle and zip readers each raise their own kind
        raise InputError(f"prompt embeddings '{path}' cannot be read ({type(exc).__name__}: {exc}).", fix) from exc
    negative = torch.zeros_like(positive) if negative is None else negative
    for key, tensor in (("prompt_embeds", positive), ("negative_prompt_embeds", negative)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise InputError(f"prompt embeddings '{path}': {key} is not a floating-point tensor.", fix)
        if not torch.isfinite(tensor).all():
            raise InputError(f"prompt embeddings '{path}': {key} holds NaN or infinite values.", fix)
    return positive, negative


def load_prompt_embeds(workload: Workload, pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and negative-prompt embeddings (no text encoder is loaded)."""
    if workload.prompt_embeds:
        positive, negative = read_prompt_embeds(workload.prompt_embeds)
    elif workload.is_reference:
        if workload.weights == "trained":
            positive, negative = reference.load_prompt_embeds()
        else:
            positive, negative = reference.random_prompt_embeds()
    else:
        raise InputError(
            f"workload '{workload.name}' uses pipeline '{workload.pipeline}' but gives no prompt embeddings.",
            "pass --prompt-embeds FILE (a safetensors/torch file with 'prompt_embeds' and 'negative_prompt_embeds').",
        )
    expected = model_shape(pipe.transformer).text_dim
    if positive.ndim != 3 or positive.shape[-1] != expected:
        raise InputError(
            f"prompt embeddings have shape {tuple(positive.shape)}; the transformer expects [1, L, {expected}].",
            "encode the prompt with the text encoder this transformer was trained with.",
        )
    dtype = torch_dtype(workload.dtype)
    return positive.to(workload.device, dtype), negative.to(workload.device, dtype)


def load_clips(workload: Workload, pipe: Any = None) -> list[Clip]:
    """The workload's clips, reconciled with its size and the pipeline's constraints (Wan's without one; notes say
    what changed)."""
    size = dict(height=workload.height, width=workload.width, num_frames=workload.num_frames)
    constraints = Constraints(**size) if pipe is None else clip_constraints(pipe, **size)
    clips = []
    for source in workload.clip_sources():
        if source.kind is not None:
            clip = synthetic_clip(source.kind, source.seed, *workload.synthetic_size())
            clip.name = source.name
            clips.append(reconcile(clip, constraints))
        else:
            clips.append(
                load_clip(source.video, source.mask, constraints, workload.fit, workload.mask_threshold, source.name)
            )
    return clips
