"""Memory plan: the bytes of every buffer the hetcache engine keeps for a model, clip size, CFG and policy.

The plan restates the engine's allocation rules (hetcache.engine: `cache_buffers` allocates what `state` holds)
buffer by buffer, for any engine family (sizes and CFG layout from its registry entry), so that
`MemoryPlan.cache_bytes` equals what `handle.stats()["cache_bytes"]` reports after a run, and says where each buffer
lives (device, or host when the policy offloads). Per cached block and cache context: self-attention keys and values
[B, N, H, d] and the skip rows [B, Nk, D] of the never-generative tokens (cache dtype, offloadable; with a forecast
also the previous FULL step's skip rows), the VACE hint [B, N, D] and the prompt's cross-attention K/V (model dtype,
on the device). Per context: the stack input and residual [B, N, D] (with a forecast also the previous residual),
the selection capture, and working buffers (gather scratch, the skipped rows' scratch when their keys/values are
refreshed, zero hint). Per transformer when offloaded: one device staging buffer per offloaded kind. CFG is two cache
contexts for Wan, one context with a batch of two for LTX-Video.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .architectures import Architecture, architecture_of, load_architecture
from .dtypes import CACHE_ONLY_DTYPES, TORCH_DTYPES
from .engine.registry import family_of, model_token_mask
from .errors import InputError
from .policy import Policy, load_policy
from .selection import evenly_spaced
from .steps import FULL, PARTIAL, REUSE
from .tokens import classify_tokens

GIB = 1024**3
EVERY_BLOCK = Policy(name="every-block", description="default settings, every block and VACE block cached")
DEVICE, HOST = "device", "host"
# Dtypes the plan can size: the model dtypes and the cache-only ones (1-byte float8).
PLAN_DTYPES: dict[str, torch.dtype] = {**TORCH_DTYPES, **CACHE_ONLY_DTYPES}
STORAGE_KINDS = ("key", "value", "skip", "skip_prev")  # per-layer caches (cache dtype, host when offloaded)
# host bytes the plan itself takes per token of the batch: classify_tokens' margin convolution unfolds its input
# on large grids (64 bytes a token, measured on 820 M tokens), beside the token mask's float copies and class masks
PLAN_BYTES_PER_TOKEN = 80


@dataclass(frozen=True)
class Buffer:
    """One buffer the engine allocates: what it holds, its shape and dtype, where it lives and when it appears."""

    kind: str  # key, value, skip, hint, text_kv, x_in, residual, features, scores, scratch, skipped_scratch,
    # zero_hint, staging.*
    owner: str  # "block.i" / "vace.i" (per layer), "context" or "transformer"
    context: str | None  # cache context ("cond" / "uncond"), None for buffers shared by the contexts
    expert: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    place: str  # DEVICE or HOST
    counted: bool  # part of the engine's `cache_bytes` (scratch and zero hint are working buffers, not caches)
    step: str  # the step kind that first allocates it (F, P or R)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Tokens:
    """Token counts of one clip: all, generative (in the mask), skippable (never generative), active (PARTIAL)."""

    grid: tuple[int, int, int]
    total: int
    generative: int
    skippable: int
    active: int


@dataclass
class MemoryPlan:
    """Every buffer of a cached run, the transformer weights, and the totals that matter for fitting a GPU."""

    architecture: str
    height: int
    width: int
    num_frames: int
    batch: int
    contexts: tuple[str, ...]
    experts: int
    model_dtype: torch.dtype
    cache_dtype: torch.dtype
    offload: bool
    tokens: Tokens
    text_len: int
    partial_blocks: tuple[int, ...]
    partial_vace_blocks: tuple[int, ...]
    weights_bytes: int
    activation_bytes: int  # estimate: the largest per-block temporaries of one call plus the stream tensors
    buffers: list[Buffer] = field(default_factory=list)

    def total(self, place: str | None = None, counted: bool | None = None) -> int:
        """Bytes of the buffers at `place` (None: anywhere) that are (`counted`) engine caches or working buffers."""
        return sum(
            b.nbytes
            for b in self.buffers
            if (place is None or b.place == place) and (counted is None or b.counted == counted)
        )

    @property
    def cache_bytes(self) -> int:
        """What the engine's `stats()["cache_bytes"]` reports after a run with the same steps."""
        return self.total(counted=True)

    @property
    def device_bytes(self) -> int:
        """Peak bytes hetcache holds on the device over a run (caches, working buffers, staging)."""
        return self.total(DEVICE)

    @property
    def host_bytes(self) -> int:
        return self.total(HOST)

    def offload_transfer_bytes(self) -> int:
        """Host↔device bytes of one PARTIAL step when offloaded: every offloaded buffer staged to the device once,
        then the computed rows (keys, values; refreshed skip rows) written back."""
        if not self.offload:
            return 0
        t = self.tokens
        rows = {"key": t.active, "value": t.active, "skip": t.active - t.generative, "skip_prev": 0}
        back = sum(b.nbytes // b.shape[1] * rows[b.kind] for b in self.buffers if b.place == HOST and b.shape[1])
        return self.host_bytes + back

    def device_total(self) -> int:
        """Weights + hetcache's device bytes + the activation estimate: what the GPU must hold at the peak."""
        return self.weights_bytes + self.device_bytes + self.activation_bytes

    def fits(self, gpu_gib: float) -> bool:
        return self.device_total() <= gpu_gib * GIB

    def by_kind(self, place: str | None = None) -> dict[str, int]:
        """Bytes per buffer kind (summed over layers, contexts and experts)."""
        out: dict[str, int] = {}
        for b in self.buffers:
            if place is None or b.place == place:
                out[b.kind] = out.get(b.kind, 0) + b.nbytes
        return out

    def by_owner(self, context: str | None = None, expert: int = 0) -> dict[str, int]:
        """Bytes per layer (or "context" / "transformer") of one cache context and expert."""
        out: dict[str, int] = {}
        for b in self.buffers:
            if b.expert == expert and (b.context == context or b.context is None):
                out[b.owner] = out.get(b.owner, 0) + b.nbytes
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals (bytes and GiB)."""
        gib = lambda n: round(n / GIB, 3)  # noqa: E731
        return {
            "architecture": self.architecture,
            "size": [self.height, self.width, self.num_frames],
            "batch": self.batch,
            "contexts": list(self.contexts),
            "experts": self.experts,
            "model_dtype": str(self.model_dtype).removeprefix("torch."),
            "cache_dtype": str(self.cache_dtype).removeprefix("torch."),
            "offload": self.offload,
            "tokens": vars(self.tokens) | {"grid": list(self.tokens.grid)},
            "text_len": self.text_len,
            "partial_blocks": len(self.partial_blocks),
            "partial_vace_blocks": len(self.partial_vace_blocks),
            "cache_bytes": self.cache_bytes,
            "device_bytes": self.device_bytes,
            "host_bytes": self.host_bytes,
            "weights_bytes": self.weights_bytes,
            "activation_bytes_estimate": self.activation_bytes,
            "by_kind_gib": {k: gib(v) for k, v in self.by_kind().items()},
            "device_gib": gib(self.device_bytes),
            "host_gib": gib(self.host_bytes),
            "weights_gib": gib(self.weights_bytes),
            "device_total_gib": gib(self.device_total()),
            "offload_transfer_gib_per_partial_step": gib(self.offload_transfer_bytes()),
        }


# ---------------------------------------------------------------------------------------------------------
# inputs


def _dtype(name: str | torch.dtype, what: str) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in PLAN_DTYPES:
        raise InputError(f"{what} {name!r} is not a dtype the plan knows.", f"use one of {', '.join(PLAN_DTYPES)}.")
    return PLAN_DTYPES[name]


def box_token_mask(grid: tuple[int, int, int], fraction: float) -> torch.Tensor:
    """Token mask [1, T', h, w]: a centred box of about `fraction` of each latent frame's tokens."""
    frames, h, w = grid
    if fraction <= 0:
        return torch.zeros(1, frames, h, w, dtype=torch.bool)
    side_h, side_w = max(1, round(h * fraction**0.5)), max(1, round(w * fraction**0.5))
    mask = torch.zeros(1, frames, h, w, dtype=torch.bool)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask[:, :, top : top + side_h, left : left + side_w] = True
    return mask


def token_grid(arch: Architecture, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
    """Token grid (T', h, w) of a clip of this pixel size on `arch` (its family's `size_grid`)."""
    return arch.family.size_grid(arch.config, num_frames, height, width)


def count_tokens(policy: Policy, token_mask: torch.Tensor) -> Tokens:
    """Token counts as the engine derives them from a token mask [B, T', h, w] (one clip per cache context).

    Active tokens of a PARTIAL step: generative ∪ evenly spaced margin ∪ chosen context; stride picks are computed,
    the other selections pick round(ratio · context tokens) (exact for batch 1; an upper bound for larger batches).
    """
    spec = policy.tokens
    classes = classify_tokens(token_mask.bool(), spec.margin_width, spec.margin_frames)
    generative = classes.generative.any(dim=0)
    margin = evenly_spaced(classes.margin, spec.margin_ratio, classes.grid[0])
    chosen = classes.generative | margin
    if spec.selection == "stride":
        chosen |= evenly_spaced(classes.context, spec.context_ratio, classes.grid[0])
        active = int(chosen.any(dim=0).sum())
    else:
        picks = sum(round(spec.context_ratio * int(n)) for n in classes.context.sum(dim=1))
        active = min(classes.num_tokens, int(chosen.any(dim=0).sum()) + picks)
    n_gen = int(generative.sum())
    return Tokens(classes.grid, classes.num_tokens, n_gen, classes.num_tokens - n_gen, active)


_WEIGHTS: dict[tuple[str, str], int] = {}


def _weights_bytes(arch: Architecture, model_dtype: torch.dtype) -> int:
    """Bytes of one transformer's weights cast like diffusers' from_pretrained(torch_dtype=...)."""
    key = (json.dumps(arch.config, sort_keys=True, default=str), str(model_dtype))
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _count_weights(arch, model_dtype)
    return _WEIGHTS[key]


def _count_weights(arch: Architecture, model_dtype: torch.dtype) -> int:
    with torch.device("meta"):
        model = arch.build()
    kept = set(getattr(model, "_keep_in_fp32_modules", None) or ())  # what from_pretrained keeps in float32
    total = 0
    for name, param in model.named_parameters():
        keep = kept.intersection(name.split("."))
        total += param.numel() * (4 if keep else model_dtype.itemsize)
    return total


# ---------------------------------------------------------------------------------------------------------
# the plan


def plan_memory(
    model: str | os.PathLike | Architecture | torch.nn.Module,
    *,
    height: int,
    width: int,
    num_frames: int,
    policy: str | os.PathLike | dict | Policy | None = None,
    cfg: bool = True,
    batch: int = 1,
    mask: float | torch.Tensor = 0.25,
    model_dtype: str | torch.dtype = "bfloat16",
    cache_dtype: str | None = None,
    offload: bool | None = None,
    partial_blocks: tuple[int, ...] | None = None,
    partial_vace_blocks: tuple[int, ...] | None = None,
    text_len: int | None = None,
    steps: str | None = None,
) -> MemoryPlan:
    """The memory plan of one cached run.

    model: shipped architecture name, diffusers `config.json` (or its folder), Architecture, or a transformer
        (then its own dtype and parameter bytes are used).
    policy: shipped name, file, dict or Policy; None: the default policy, every block cached.
    mask: share of each frame's tokens inside the edit mask (a centred box), or a token mask [T', h, w] / [B, ...].
    cache_dtype / offload / partial_blocks / partial_vace_blocks: override the policy's settings ("auto" = model).
    steps: the step kinds the run takes (e.g. the plan string); default: the policy's explicit plan, else F, P, R.
    """
    policy = EVERY_BLOCK if policy is None else load_policy(policy)
    if isinstance(model, torch.nn.Module):
        arch = architecture_of(model)
        model_dtype = model.dtype
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
    else:
        arch = model if isinstance(model, Architecture) else load_architecture(model)
        model_dtype = _dtype(model_dtype, "model dtype")
        weights = _weights_bytes(arch, model_dtype)
    family_of(arch.class_name, engine=True)  # the plan restates the engine: families it does not run are refused
    for name, value in (("height", height), ("width", width), ("num_frames", num_frames), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.", f"pass a valid {name}.")
    grid = token_grid(arch, height, width, num_frames)
    if isinstance(mask, torch.Tensor):
        token_mask = mask.bool().unsqueeze(0) if mask.ndim == 3 else mask.bool()
        if tuple(token_mask.shape[1:]) != grid:
            raise InputError(
                f"token mask of shape {tuple(mask.shape)} does not match the token grid {grid} of the clip.",
                "pass a token mask [T', h, w] of this size, or a mask-area fraction.",
            )
    else:
        if not 0.0 <= float(mask) <= 1.0:
            raise InputError(f"mask fraction {mask!r} is outside [0, 1].", "pass the share of the frame in the mask.")
        token_mask = box_token_mask(grid, float(mask))
    in_batch = cfg and arch.family.cfg_in_batch  # LTX: CFG as one batch of two in one cache context
    if in_batch:
        batch, token_mask = batch * 2, torch.cat([token_mask, token_mask]) if token_mask.shape[0] > 1 else token_mask
    token_mask = token_mask.expand(batch, *grid) if token_mask.shape[0] == 1 else token_mask
    tokens = count_tokens(policy, token_mask)

    shape = arch.shape
    num_layers, num_vace = shape.num_layers, shape.num_vace_layers
    layers = policy.layers
    main = tuple(sorted(set(range(num_layers) if layers.partial_blocks is None else layers.partial_blocks)))
    vace = tuple(sorted(set(range(num_vace) if layers.partial_vace_blocks is None else layers.partial_vace_blocks)))
    main = main if partial_blocks is None else tuple(sorted(set(partial_blocks)))
    vace = vace if partial_vace_blocks is None else tuple(sorted(set(partial_vace_blocks)))
    for what, values, limit in (("partial blocks", main, num_layers), ("partial VACE blocks", vace, num_vace)):
        if values and (min(values) < 0 or max(values) >= limit):
            raise InputError(f"{what} {list(values)} outside the model's {limit}.", f"use indices 0 … {limit - 1}.")

    dtype_name = cache_dtype or policy.cache.dtype
    storage_dtype = model_dtype if dtype_name == "auto" else _dtype(dtype_name, "cache dtype")
    offloaded = policy.cache.offload if offload is None else offload
    letters = set(steps or policy.step_plan.plan or (FULL + PARTIAL + REUSE))
    if tokens.generative in (0, tokens.total):  # empty or full mask: PARTIAL steps run full
        letters.discard(PARTIAL)
    text = arch.text_len if text_len is None else text_len
    plan = MemoryPlan(
        architecture=arch.name,
        height=height,
        width=width,
        num_frames=num_frames,
        batch=batch,
        contexts=("cond_uncond",) if in_batch else ("cond", "uncond") if cfg else ("cond",),
        experts=arch.experts,
        model_dtype=model_dtype,
        cache_dtype=storage_dtype,
        offload=offloaded,
        tokens=tokens,
        text_len=text,
        partial_blocks=main,
        partial_vace_blocks=vace,
        weights_bytes=weights * arch.experts,
        activation_bytes=0,
    )
    plan.buffers = _buffers(plan, arch, policy, letters)
    plan.activation_bytes = _activation_estimate(plan, arch)
    return plan


def _buffers(plan: MemoryPlan, arch: Architecture, policy: Policy, letters: set[str]) -> list[Buffer]:
    """Every buffer, following the engine: what each block / context / transformer allocates on which step."""
    shape = arch.shape
    b, n, d = plan.batch, plan.tokens.total, shape.dim
    heads, head_dim = shape.heads, shape.head_dim
    nk, nu = plan.tokens.skippable, plan.tokens.active
    model, cache = plan.model_dtype, plan.cache_dtype
    head = arch.family.layout.head_input_dtype or model
    stored = HOST if plan.offload else DEVICE
    spec = policy.tokens
    selection_layer = spec.selection_layer % shape.num_layers
    features = spec.selection in ("kmeans", "kmeans_attention") and spec.context_ratio > 0
    scores = spec.selection in ("attention", "kmeans_attention") and spec.context_ratio > 0
    partial = PARTIAL in letters and bool(plan.partial_blocks or plan.partial_vace_blocks)
    forecast = policy.cache.forecast != "none"
    forecast_skipped = forecast and policy.cache.forecast_skip_horizon != 0  # skip rows extrapolated on PARTIAL steps
    out: list[Buffer] = []
    for expert in range(plan.experts):
        for context in plan.contexts:

            def add(kind, owner, shape, dtype, place=DEVICE, counted=True, step=FULL, ctx=context, ex=expert):
                out.append(Buffer(kind, owner, ctx, ex, tuple(shape), dtype, place, counted, step))

            def cached_layer(owner: str, hint: bool) -> None:
                if not spec.refresh_skipped_kv:  # refreshed: PARTIAL steps rewrite every row (shared_key below)
                    add("key", owner, (b, n, heads, head_dim), cache, stored)
                    add("value", owner, (b, n, heads, head_dim), cache, stored)
                add("skip", owner, (b, nk, d), cache, stored)
                if forecast_skipped:  # the skip rows of the FULL step before
                    add("skip_prev", owner, (b, nk, d), cache, stored)
                if hint:
                    add("hint", owner, (b, n, d), model)
                add("text_kv", owner, (2, b, plan.text_len, heads, head_dim), model)

            for index in plan.partial_vace_blocks:
                cached_layer(f"vace.{index}", hint=True)
            for index in plan.partial_blocks:
                cached_layer(f"block.{index}", hint=False)
            if (features or scores) and selection_layer not in plan.partial_blocks:
                add("text_kv", f"block.{selection_layer}", (2, b, plan.text_len, heads, head_dim), model)
            add("x_in", "context", (b, n, d), model)
            add("residual", "context", (b, n, d), head)  # in the dtype the head takes (Wan: float32)
            if forecast:  # the residual of the computed step before
                add("residual_prev", "context", (b, n, d), head)
            if features:
                add("features", "context", (b, n, d), model)
            if scores:
                add("scores", "context", (b, n), torch.float32)
            if partial:
                add("scratch", "context", (b, nu, d), model, counted=False, step=PARTIAL)
            if partial and spec.refresh_skipped_kv:  # the skipped tokens' block inputs, for their K/V refresh,
                add("skipped_scratch", "context", (b, n - nu, d), model, counted=False, step=PARTIAL)
                for kind in ("shared_key", "shared_value"):  # and one K/V pair every cached layer fills in turn
                    add(kind, "context", (b, n, heads, head_dim), cache, counted=False, step=PARTIAL)
            if spec.trim_discarded:  # the discard trim's rows (inside and outside: n in all) and K/V, on FULL steps
                last = shape.num_layers - 1
                if last not in plan.partial_blocks and not ((features or scores) and selection_layer == last):
                    add("text_kv", f"block.{last}", (2, b, plan.text_len, heads, head_dim), model)
                add("trim_scratch", "context", (b, n, d), model, counted=False)
                for kind in ("trim_key", "trim_value"):
                    add(kind, "context", (b, n, heads, head_dim), model, counted=False)
            if arch.is_vace:  # what REUSE steps hand the main stream as hints
                add("zero_hint", "context", (b, n, d), model, counted=False)
        if plan.offload and partial:
            kv = (b, n, heads, head_dim)
            cached_layers = len(plan.partial_blocks) + len(plan.partial_vace_blocks)
            for _slot in range(min(2, cached_layers)):  # two slots: the next layer is prefetched while one computes
                kinds = [] if spec.refresh_skipped_kv else [("key", kv), ("value", kv)]
                kinds += [("skip", (b, nk, d))]
                kinds += [("skip_prev", (b, nk, d))] if forecast_skipped else []
                for kind, shape in kinds:
                    out.append(
                        Buffer(f"staging.{kind}", "transformer", None, expert, shape, cache, DEVICE, True, PARTIAL)
                    )
    return out


def _activation_estimate(plan: MemoryPlan, arch: Architecture) -> int:
    """Rough peak of one transformer call's temporaries (not hetcache's): stream tensors, fresh VACE hints and one
    block's intermediates (fp32 upcasts, Q/K/V, FFN hidden; dequantised K/V when the cache dtype is narrower)."""
    dequantised = plan.cache_dtype != plan.model_dtype and bool(plan.partial_blocks or plan.partial_vace_blocks)
    fresh_hints = arch.shape.num_vace_layers - len(plan.partial_vace_blocks)
    return _call_bytes(arch, plan.batch, plan.tokens.total, plan.model_dtype, fresh_hints, dequantised)


def _call_bytes(arch: Architecture, b: int, n: int, model_dtype: torch.dtype, fresh_hints: int, dequant: bool) -> int:
    """One transformer call's temporaries for a batch of `b` clips of `n` tokens (see `_activation_estimate`)."""
    shape = arch.shape
    d, m = shape.dim, model_dtype.itemsize
    stream = b * n * d * m * (2 if arch.is_vace else 1) + 2 * n * shape.head_dim * 4
    hints = fresh_hints * b * n * d * m
    block = b * n * (3 * d * 4 + 4 * d * m + shape.ffn_dim * m)
    if dequant:
        block += 2 * b * n * d * m
    return stream + hints + block


def batch_tokens(arch: Architecture, *, height: int, width: int, num_frames: int, cfg: bool, batch: int) -> int:
    """Tokens of one transformer call's batch at this size (CFG doubles the batch where it runs in one call)."""
    frames, h, w = token_grid(arch, height, width, num_frames)
    return batch * (2 if cfg and arch.family.cfg_in_batch else 1) * frames * h * w


def least_device_bytes(
    arch: Architecture, *, height: int, width: int, num_frames: int, cfg: bool = True, batch: int = 1,
    model_dtype: str | torch.dtype = "bfloat16",
) -> int:  # fmt: skip
    """A lower bound of every plan's device total at this size, computed without building a token mask (so an
    absurd size is judged before anything is allocated): the weights and one call's activations, no cache."""
    dtype = _dtype(model_dtype, "model dtype")
    b = batch * (2 if cfg and arch.family.cfg_in_batch else 1)
    n = batch_tokens(arch, height=height, width=width, num_frames=num_frames, cfg=cfg, batch=batch) // b
    return _weights_bytes(arch, dtype) * arch.experts + _call_bytes(arch, b, n, dtype, 0, False)


def session_plans(
    policy: str | os.PathLike | dict | Policy, session: Any, at: tuple[int, int, int] | None = None
) -> list[MemoryPlan]:
    """The plan of each clip of a workload session (hetcache.workloads.execute.Session): its transformer, clip size,
    mask, prompt length and CFG setting; with `at` = (height, width, frames), at that size instead, each clip's token
    mask scaled (nearest) to its token grid."""
    policy = load_policy(policy)
    transformer = session.transformer
    common = dict(policy=policy, cfg=session.workload.guidance_scale > 1.0, text_len=session.prompt_embeds.shape[1])
    plans = []
    for clip in session.clips:
        frames, height, width = clip.frames.shape[:3]
        mask = model_token_mask(transformer, torch.as_tensor(clip.mask), policy.tokens.mask_threshold)
        if at is not None:
            height, width, frames = at
            grid = token_grid(architecture_of(transformer), height, width, frames)
            cells = mask.reshape(1, 1, *mask.shape[-3:]).float()
            mask = torch.nn.functional.interpolate(cells, size=grid, mode="nearest")[0].bool()
        plans.append(plan_memory(transformer, height=height, width=width, num_frames=frames, mask=mask, **common))
    return plans


def session_cache_gib(
    policy: str | os.PathLike | dict | Policy, session: Any, at: tuple[int, int, int] | None = None
) -> float:
    """Device GiB hetcache holds for `policy` on a workload session (its largest clip; at size `at` if given): what a
    tuner's `--max-cache-gib` bound constrains (feasible when `session_cache_gib(...) - max_gib <= 0`)."""
    return max(plan.device_bytes for plan in session_plans(policy, session, at)) / GIB


def cache_gib_of(policy: str | os.PathLike | dict | Policy, model: Any, **workload: Any) -> float:
    """GiB of device memory hetcache holds for `policy` on `model` at a workload given as `plan_memory` keywords."""
    return plan_memory(model, policy=policy, **workload).device_bytes / GIB
