"""`profile(pipe, inputs)` and `profile_session(session)`: run clips through a pipeline with the recorder attached."""

from __future__ import annotations

import datetime
import inspect
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hetcache import __version__
from hetcache.errors import InputError
from hetcache.fingerprint import model_fingerprint

from .curve import fit_polynomial, modulation_changes
from .families import select_layers, transformer_of
from .layer_cost import layer_flops
from .masks import as_mask_tensor
from .options import ProfileOptions
from .recorder import Recorder
from .reduce import ClipResult, describe_tensors, finish_clip
from .store import SCHEMA, Profile
from .summary import headroom, layer_records

HETCACHE_KEYS = ("name", "edit_mask")  # consumed by hetcache, not passed to the pipeline


@dataclass
class ClipRun:
    """One clip to profile: a name, an optional mask and the call that runs the pipeline on it."""

    name: str
    steps: int
    mask: torch.Tensor | None
    call: Callable[[], float | None]  # runs the pipeline; may return its own denoising seconds


def _default_steps(pipe: Any) -> int:
    parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    default = parameter.default if parameter is not None else None
    return default if isinstance(default, int) else 50


def pipeline_runs(pipe: Any, inputs: dict | list[dict]) -> list[ClipRun]:
    """ClipRuns from pipeline keyword arguments (each may add "name" and "edit_mask", which hetcache consumes)."""
    items = [inputs] if isinstance(inputs, dict) else list(inputs)
    if not items or not all(isinstance(item, dict) for item in items):
        raise InputError(
            "profile inputs must be a dict of pipeline arguments or a non-empty list of them.",
            "pass e.g. {'prompt_embeds': ..., 'num_inference_steps': 20, 'edit_mask': pixel_mask}.",
        )
    accepts_output_type = "output_type" in inspect.signature(pipe.__call__).parameters
    runs = []
    for i, item in enumerate(items):
        kwargs = {k: v for k, v in item.items() if k not in HETCACHE_KEYS}
        if accepts_output_type:
            kwargs.setdefault("output_type", "latent")
        name = str(item.get("name", f"clip{i}"))
        mask = item.get("edit_mask")
        mask = None if mask is None else as_mask_tensor(mask, f"the edit_mask of input '{name}'")
        steps = int(kwargs.get("num_inference_steps", _default_steps(pipe)))

        def call(kwargs=kwargs) -> None:
            pipe(**kwargs)

        runs.append(ClipRun(name, steps, mask, call))
    return runs


def session_runs(session: Any, clips: list[str] | None = None) -> list[ClipRun]:
    """ClipRuns for a LoadedWorkload's clips (all, or the named ones), with their pixel masks."""
    chosen = session.clips if clips is None else [session.clip(name) for name in clips]
    runs = []
    for clip in chosen:
        mask = as_mask_tensor(clip.mask, f"the mask of clip '{clip.name}'")

        def call(clip=clip) -> float:
            return session.generate(clip, decode=False).denoise_seconds

        runs.append(ClipRun(clip.name, session.workload.steps, mask, call))
    return runs


def _memory(device: torch.device, recorder: Recorder) -> dict[str, Any]:
    record: dict[str, Any] = {
        "device": str(device),
        "profiler_bytes": recorder.peak_profiler_bytes,
        "attention_transient_bytes": recorder.peak_transient_bytes,
    }
    if device.type == "cuda":
        record["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        record["peak_source"] = "torch.cuda.max_memory_allocated"
    else:
        record["peak_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        record["peak_source"] = "process max RSS (CPU)"
    return record


def _step_curve(transformer, results: list[ClipResult], degree: int) -> dict[str, Any]:
    mods, outs, source = [], [], "none"
    for result in results:
        changes, source = modulation_changes(transformer, result.timesteps, result.modulation)
        n = min(len(changes), len(result.output_change))
        mods.append(changes[:n])
        outs.append(result.output_change[:n])
    fit = fit_polynomial(np.concatenate(mods) if mods else [], np.concatenate(outs) if outs else [], degree)
    length = min(len(m) for m in mods) if mods else 0
    return {
        "modulation_change": np.mean([m[:length] for m in mods], axis=0).tolist() if length else [],
        "output_change": np.nanmean([o[:length] for o in outs], axis=0).tolist() if length else [],
        "polynomial": fit.coefficients,
        "degree": fit.degree,
        "fit_r2": fit.r2,
        "fit_rmse": fit.rmse,
        "points": fit.points,
        "fit_note": fit.note,
        "fit_range": list(fit.x_range) if fit.x_range else None,
        "modulation_source": source,
        "order": "numpy.polyval: highest degree first; x = modulation change, y = model output change",
    }


def profile_runs(
    transformer: torch.nn.Module,
    runs: list[ClipRun],
    options: ProfileOptions,
    workload: dict[str, Any],
    progress: bool = False,
) -> Profile:
    """Profile each run in turn with the recorder attached; the transformer is restored afterwards."""
    layers = select_layers(transformer, options.layers)
    recorder = Recorder(transformer, layers, options)
    device = recorder.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(r.steps for r in runs), desc="profiling", unit="step")
        recorder.on_step = bar.update
    results: list[ClipResult] = []
    recorder.attach()
    try:
        for run in runs:
            recorder.begin_clip(run.name, run.steps, run.mask)
            with torch.no_grad():
                seconds = run.call()
            clip = recorder.end_clip()
            result = finish_clip(clip, recorder.branches, options.max_tokens)
            measured = recorder.clock.seconds(clip.started, clip.ended) if clip.ended is not None else float("nan")
            result.denoise_seconds = float(seconds) if seconds is not None else measured
            results.append(result)
    finally:
        recorder.detach()
        if bar is not None:
            bar.close()
    return _assemble(transformer, layers, recorder, results, options, workload)


def _assemble(transformer, layers, recorder: Recorder, results: list[ClipResult], options, workload) -> Profile:
    first = results[0]
    times = recorder.timer.mean_ms() if options.timing else [float("nan")] * len(layers)
    arguments = recorder.first_call[0] if recorder.first_call else None
    flops, split, flops_source = layer_flops(transformer, layers, first.tokens, first.text_len, arguments)
    cache_bytes = 3 * first.tokens * first.hidden_dim * first.element_size
    joint_text = "attention_text" in first.tensors
    records = layer_records(
        [layer.describe() for layer in layers], results, times, flops, [cache_bytes] * len(layers), joint_text
    )
    curve = _step_curve(transformer, results, options.degree)
    steps = first.steps
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "tool": f"hetcache {__version__}",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "workload": workload,
        "model": model_fingerprint(transformer),
        "steps": steps,
        "timesteps": first.timesteps,
        "branches": list(recorder.branches),
        "clips": [
            {
                "name": r.name,
                "grid": list(r.grid) if r.grid else None,
                "tokens": r.tokens,
                "token_classes": r.token_counts,
                "steps": r.steps,
                "denoise_seconds": r.denoise_seconds,
                "output_change": r.output_change,
                "notes": r.notes,
            }
            for r in results
        ],
        "step_curve": curve,
        "layers": records,
        "flops_split": split,
        "flops_source": flops_source,
        "memory": {
            **_memory(recorder.device, recorder),
            "layer_cache_bytes": "K, V and residual of all tokens, one branch, model dtype",
        },
        "headroom": headroom(curve, results, records, steps, options.small_change, workload),
        "options": options.to_dict(),
        "attention_recorded": recorder.attention_observed,
        "tensors": {
            **describe_tensors(first, list(recorder.branches)),
            "clips": {r.name: ("" if i == 0 else f"{r.name}/") for i, r in enumerate(results)},
        },
    }
    if options.attention_every and not recorder.attention_observed:
        data["headroom"]["warnings"].append(
            "attention contribution was not recorded: the self-attention does not call torch's "
            "scaled_dot_product_attention (set the native attention backend to record it)."
        )
    tensors: dict[str, torch.Tensor] = {}
    for i, result in enumerate(results):
        prefix = "" if i == 0 else f"{result.name}/"
        tensors.update({prefix + name: t for name, t in result.tensors.items()})
        tensors[prefix + "drift_by_class"] = torch.from_numpy(result.drift_by_class).half()
    data["tensors"]["drift_by_class"] = list(first.drift_by_class.shape)
    data["tensors"]["axes"]["drift_by_class"] = ["branch", "step", "layer", "class: generative, margin, context, all"]
    return Profile(data, tensors)


def profile(
    pipe: Any, inputs: dict | list[dict], *, progress: bool = False, workload: dict | None = None, **options: Any
) -> Profile:
    """Profile `pipe` on `inputs`: pipeline keyword arguments per clip, optionally with "name" and "edit_mask".

    edit_mask: pixel mask [F, H, W] (1 = region to generate) or token mask [T', h, w]; Wan-VACE reads it from the
    control states when absent; without any mask, drift and attention cover all tokens.

    Options: see `ProfileOptions` (layers, attention_every, attention_chunk, degree, margin_width, mask_threshold,
    max_tokens, small_change, residual, timing).
    """
    transformer = transformer_of(pipe)
    opts = ProfileOptions.from_kwargs(options)
    runs = pipeline_runs(pipe, inputs)
    description = workload or {
        "name": type(pipe).__name__,
        "pipeline": type(pipe).__name__,
        "clips": [r.name for r in runs],
        "steps": runs[0].steps,
    }
    return profile_runs(transformer, runs, opts, description, progress)


def profile_session(session: Any, clips: list[str] | None = None, *, progress: bool = False, **options: Any) -> Profile:
    """Profile a LoadedWorkload's pipeline on its clips (all, or the named ones)."""
    transformer = transformer_of(session.pipe)
    opts = ProfileOptions.from_kwargs(options)
    runs = session_runs(session, clips)
    return profile_runs(transformer, runs, opts, session.workload.to_dict(), progress)
