"""The policy resolved against one model at apply time: a frozen config the hooks read instead of the policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..cost import CostModel
from ..dtypes import CACHE_ONLY_DTYPES, TORCH_DTYPES
from ..policy import Policy, StepPlanSpec
from .registry import Family, engine_block_adapter, family_of

if TYPE_CHECKING:
    from .trim import Discarded


def main_layer(index: int) -> str:
    """Name of main block `index`'s caches."""
    return f"block.{index}"


def vace_layer(index: int) -> str:
    """Name of VACE block `index`'s caches."""
    return f"vace.{index}"


@dataclass(frozen=True)
class LayerGeometry:
    """Shapes of one block's cache rows: self-attention heads, head width and model width."""

    heads: int
    head_dim: int
    dim: int


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs from a policy and a model, resolved once (no policy reads on the hot path)."""

    policy: Policy
    step_plan: StepPlanSpec
    plan_override: str | None
    expected_steps: int | None
    partial_blocks: frozenset[int]
    partial_vace: frozenset[int]
    vace_first: tuple[bool, ...]  # per VACE block: it projects the control stream in (`proj_in`)
    selection_layer: int
    capture_features: bool
    capture_scores: bool
    residual_fill: bool  # skipped tokens get input + cached residual (else the cached output)
    refresh_skipped_kv: bool  # partial blocks recompute the skipped tokens' keys/values from their inputs
    discarded: Discarded | None  # what the editing contract discards of the output (the caller's `discarded=`)
    trim_discarded: bool  # the policy trims the last block where that is discarded, and the caller said what is
    mask_threshold: float
    margin_width: int
    margin_frames: int
    margin_ratio: float
    context_ratio: float
    selection: str
    clusters: int
    seed: int
    cache_dtype: torch.dtype
    offload: bool
    forecast: bool  # REUSE steps extrapolate the cached whole-stack residual linearly in time
    forecast_skipped: bool  # PARTIAL steps extrapolate the skipped tokens' skip rows too
    forecast_skip_horizon: float | None  # the most FULL-step intervals they are extrapolated over (None: no limit)
    model_dtype: torch.dtype
    patch_size: tuple[int, int, int]
    is_vace: bool
    num_layers: int
    geometry: LayerGeometry
    cost: CostModel
    family: Family  # the model's family adapter (token grid, VAE strides, edit mask from the inputs)
    model_config: Any  # the transformer's diffusers config, as the family reads it

    @property
    def has_partial_blocks(self) -> bool:
        """Whether a PARTIAL step runs any block partially (else it is a FULL step)."""
        return bool(self.partial_blocks) or bool(self.partial_vace)

    @property
    def captures(self) -> bool:
        """Whether the selection layer records features or scores on FULL steps."""
        return self.capture_features or self.capture_scores

    @property
    def text_layers(self) -> tuple[str, ...]:
        """Layers whose prompt K/V hetcache computes and keeps (those that run its block body)."""
        main = [main_layer(i) for i in range(self.num_layers) if self.main_layer_uses_body(i) or self.trims(i)]
        return (*main, *(vace_layer(i) for i in sorted(self.partial_vace)))

    def trims(self, index: int) -> bool:
        """Main block `index` is the last one and the discard trim may run it (hetcache.engine.trim)."""
        return self.trim_discarded and index == self.num_layers - 1

    def main_layer_uses_body(self, index: int) -> bool:
        """Main block `index` runs hetcache's block body (cached, or the selection layer that records)."""
        return index in self.partial_blocks or (self.captures and index == self.selection_layer)


def resolve_config(
    model: torch.nn.Module,
    policy: Policy,
    plan: str | None,
    expected_steps: int | None,
    discarded: Discarded | None = None,
) -> EngineConfig:
    """Resolve `policy` for `model`: concrete layer sets, dtypes, token settings and the step rule (`discarded`: what
    the editing contract discards of the output, for `tokens.trim_discarded`)."""
    family = family_of(model, engine=True)
    shape = family.shape(model.config)
    layout = family.layout
    vace_blocks = list(getattr(model, layout.vace_blocks)) if layout.vace_blocks else []
    layers, tokens = policy.layers, policy.tokens
    return EngineConfig(
        policy=policy,
        step_plan=policy.step_plan,
        plan_override=plan,
        expected_steps=expected_steps or (policy.workload.steps if policy.workload else None),
        partial_blocks=frozenset(range(shape.num_layers) if layers.partial_blocks is None else layers.partial_blocks),
        partial_vace=frozenset(
            range(len(vace_blocks)) if layers.partial_vace_blocks is None else layers.partial_vace_blocks
        )
        if vace_blocks
        else frozenset(),
        vace_first=tuple(engine_block_adapter(type(block)).projects_in(block) for block in vace_blocks),
        selection_layer=tokens.selection_layer % shape.num_layers,
        capture_features=tokens.needs_features,
        capture_scores=tokens.needs_scores,
        residual_fill=tokens.skip_fill == "residual",
        refresh_skipped_kv=tokens.refresh_skipped_kv,
        discarded=discarded,
        trim_discarded=tokens.trim_discarded and discarded is not None,
        mask_threshold=tokens.mask_threshold,
        margin_width=tokens.margin_width,
        margin_frames=tokens.margin_frames,
        margin_ratio=tokens.margin_ratio,
        context_ratio=tokens.context_ratio,
        selection=tokens.selection,
        clusters=tokens.clusters,
        seed=tokens.seed,
        cache_dtype={**TORCH_DTYPES, **CACHE_ONLY_DTYPES}.get(policy.cache.dtype, model.dtype),
        offload=policy.cache.offload,
        forecast=policy.cache.forecast == "linear",
        forecast_skipped=policy.cache.forecast == "linear" and policy.cache.forecast_skip_horizon != 0,
        forecast_skip_horizon=policy.cache.forecast_skip_horizon,
        model_dtype=model.dtype,
        patch_size=shape.patch,
        is_vace=bool(vace_blocks),
        num_layers=shape.num_layers,
        geometry=LayerGeometry(heads=shape.heads, head_dim=shape.head_dim, dim=shape.dim),
        cost=CostModel.from_shape(shape),
        family=family,
        model_config=model.config,
    )
