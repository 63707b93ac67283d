"""The family registry: everything hetcache knows about a model family, keyed by class, in one place.

A model family is one adapter module. It registers a `Family` (which transformer classes belong to it, their
config-level shape and VAE strides, the token grid of a call, the timestep modulation the step rule reads, where
the blocks, output norm and text embedder sit, the attention processors its block maths restates, its own refusals)
and a `BlockAdapter` per block class (arguments by role, the FULL / PARTIAL / K/V-refresh maths). The engine, the
cost model, the memory plan, the tuner and the profiler read family facts only from here. `wan.py` (Wan, Wan-VACE)
and `ltx.py` (LTX-Video) are the engine's families; `cogvideox.py` registers what the profiler reads of CogVideoX.

A family the registry does not know gets `UnsupportedModelError` naming the adapter to write. Blocks of unknown
families fall back to diffusers' `TransformerBlockRegistry` (the profiler records them), then to `hidden_states`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..errors import InputError, UnsupportedModelError
from ..tokens import VaeStrides, latent_frame_count

MAIN, VACE = "main", "vace"
NO_EXTRAS: Mapping[str, Any] = MappingProxyType({})
ADAPTER_DOC = "docs/engine.md, 'A new family'"


@dataclass
class BlockAdapter:
    """What hetcache needs to know about one block class.

    kind: MAIN (returns its stream) or VACE (returns (hint for the main stream, control stream)).
    arguments: role → parameter name of the block's forward (roles: hidden, text, control, temb, rope, and the
        family's `extra_roles`, e.g. LTX's text attention mask).
    stream: the role of the stream the block transforms (hidden for main blocks, control for VACE blocks).
    output_index: element of a tuple output that is the stream out (None: the output itself).
    body / kv / text_kv / project_in / project_out: the family's maths (engine only; None where not supported);
        `kv` gives the self-attention keys and values of some rows from their block input (skipped-token refresh).
    extra_roles: roles read from each call and passed to `body` / `kv` as `extras` (a dict role → value).
    """

    kind: str
    arguments: dict[str, str]
    stream: str = "hidden"
    output_index: int | None = None
    body: Callable[..., Any] | None = None
    kv: Callable[..., Any] | None = None
    text_kv: Callable[..., Any] | None = None
    project_in: Callable[..., Any] | None = None
    project_out: Callable[..., Any] | None = None
    projects_in: Callable[[torch.nn.Module], bool] | None = None  # VACE: whether this block adds the main stream in
    extra_roles: tuple[str, ...] = ()
    positions: dict[str, int] = field(default_factory=dict)

    def bind(self, cls: type) -> BlockAdapter:
        """Record each parameter's position in `cls.forward` (once per class, at registration)."""
        names = list(inspect.signature(cls.forward).parameters)[1:]
        self.positions = {name: i for i, name in enumerate(names)}
        return self

    def argument(self, role: str, args: tuple, kwargs: dict) -> Any:
        """The value of `role` in one call of the block, whether passed by name or by position (None if absent)."""
        name = self.arguments[role]
        if name in kwargs:
            return kwargs[name]
        position = self.positions[name]
        return args[position] if position < len(args) else None

    def extras(self, args: tuple, kwargs: dict) -> Mapping[str, Any]:
        """The family's extra arguments of one call (a shared empty mapping for families that need none)."""
        if not self.extra_roles:
            return NO_EXTRAS
        return {role: self.argument(role, args, kwargs) for role in self.extra_roles}

    def stream_out(self, output: Any) -> torch.Tensor:
        """The stream the block returns."""
        if self.kind == VACE:
            return output[1]
        return output[self.output_index] if isinstance(output, (tuple, list)) else output


@dataclass(frozen=True)
class TransformerAdapter:
    """Where a transformer class keeps its blocks, output norm and text embedder."""

    main_blocks: str
    vace_blocks: str | None
    head: str  # module whose input is the last block's output (the whole-stack residual is taken there)
    head_input_dtype: torch.dtype | None  # dtype the head receives its input in (None: the model's)
    text_embedder: str  # module whose output holds the prompt states every block attends to
    text_output_index: int | None  # element of the embedder's tuple output (None: the output itself)


@dataclass(frozen=True)
class ModelShape:
    """The config-level sizes the cost model, the memory plan and the engine's buffers need."""

    heads: int
    head_dim: int
    ffn_dim: int
    num_layers: int
    num_vace_layers: int
    patch: tuple[int, int, int]  # (time, height, width) of one token in latent cells
    in_channels: int
    out_channels: int
    text_dim: int  # width of the prompt embeddings the transformer takes
    freq_dim: int  # sinusoidal timestep features fed to the time embedder
    vace_in_channels: int = 0

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch)


def _no_check(model: torch.nn.Module) -> None:
    return None


def _no_mask(inputs: Mapping[str, Any], patch: tuple[int, int, int], threshold: float) -> torch.Tensor | None:
    return None


@dataclass(frozen=True)
class Family:
    """One model family: every fact about it that is not a block's maths.

    classes: transformer class names (config-level users, e.g. the memory plan, need no import).
    fields: the config fields a policy depends on (the model fingerprint hashes them; never reorder a shipped list).
    shape / vae: config → `ModelShape` / `VaeStrides` (config: a diffusers config or a plain dict).
    call_grid: (config, a call's bound arguments) → token grid (T', h, w) in the order tokens are flattened, or None.
    timestep_modulation: (transformer, timesteps [S]) → [S, …] what the blocks are modulated by at each timestep
        (the step rule's signal, and the profiler's step curve's x axis, named `modulation_source`).
    layout / processors / attention_modules: the engine's view; a family without `layout` is read by the profiler
        only, and `apply_hetcache` refuses it.
    mask_from_inputs: the edit mask read back from a call's inputs (Wan-VACE control states), else None.
    check: the family's own refusals (e.g. Wan I2V's added K/V projections), raised as UnsupportedModelError.
    cfg_in_batch: classifier-free guidance runs as one batch of two (LTX) rather than two cache contexts (Wan).
    text_len: prompt tokens of the released pipelines (memory plans of real sizes).
    """

    name: str
    classes: tuple[str, ...]
    fields: tuple[str, ...]
    shape: Callable[[Mapping[str, Any]], ModelShape]
    vae: Callable[[Mapping[str, Any]], VaeStrides]
    call_grid: Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[int, int, int] | None]
    timestep_modulation: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None
    modulation_source: str = "timestep_modulation"  # what the profile's step curve names as its x axis
    layout: TransformerAdapter | None = None
    processors: tuple[str, ...] = ()
    attention_modules: tuple[str, ...] = ("attn1", "attn2")
    mask_from_inputs: Callable[..., torch.Tensor | None] = _no_mask
    check: Callable[[torch.nn.Module], None] = _no_check
    cfg_in_batch: bool = False
    text_len: int = 512

    @property
    def runs_engine(self) -> bool:
        """Whether the engine has this family's block maths (else it is profiled only)."""
        return self.layout is not None

    def size_grid(self, config: Mapping[str, Any], num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (T', h, w) of a clip of this pixel size: the VAE's compression, then the patch."""
        strides, (pt, ph, pw) = self.vae(config), self.shape(config).patch
        cell_h, cell_w = strides.spatial * ph, strides.spatial * pw
        if height % cell_h or width % cell_w:
            raise InputError(
                f"size {height}x{width} is not a multiple of the {cell_h}x{cell_w}-pixel token patch of this "
                f"{self.name} model.",
                f"use a height and width divisible by {cell_h} and {cell_w}.",
            )
        frames = latent_frame_count(num_frames, strides.temporal)
        return (math.ceil(frames / pt), height // cell_h, width // cell_w)

    def pixel_size(self, config: Mapping[str, Any], grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """(frames, height, width) of the pixel clip whose token grid is `grid` (the inverse of `size_grid`)."""
        strides, (pt, ph, pw) = self.vae(config), self.shape(config).patch
        return (
            (grid[0] * pt - 1) * strides.temporal + 1,
            grid[1] * ph * strides.spatial,
            grid[2] * pw * strides.spatial,
        )


_BLOCKS: dict[type, BlockAdapter] = {}
_FALLBACKS: dict[type, BlockAdapter] = {}
_TRANSFORMERS: dict[type, TransformerAdapter] = {}
_FAMILIES: dict[str, Family] = {}  # by transformer class name
_loaded = False


def register_block(cls: type, adapter: BlockAdapter) -> None:
    """Register the adapter of a block class (its arguments and maths)."""
    _BLOCKS[cls] = adapter.bind(cls)


def register_family(family: Family) -> Family:
    """Register a family for each of its transformer class names (a later registration replaces an earlier one)."""
    for name in family.classes:
        _FAMILIES[name] = family
    return family


def unregister_family(family: Family) -> None:
    """Forget a family (tests that register one of their own)."""
    for name in family.classes:
        if _FAMILIES.get(name) is family:
            del _FAMILIES[name]


def _load_adapters() -> None:
    """Import the shipped adapters on first use (they import diffusers model classes)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import cogvideox, ltx, wan  # noqa: F401


def find_family(model_or_class: Any) -> Family | None:
    """The family of a transformer, a transformer class or a class name; None when no adapter is registered."""
    _load_adapters()
    if isinstance(model_or_class, str):
        name = model_or_class
    else:
        name = (model_or_class if isinstance(model_or_class, type) else type(model_or_class)).__name__
    return _FAMILIES.get(name)


def known_classes(engine_only: bool = False) -> list[str]:
    """Transformer class names the registry knows (the engine's only, with `engine_only`)."""
    _load_adapters()
    return sorted(name for name, family in _FAMILIES.items() if family.runs_engine or not engine_only)


def family_of(model_or_class: Any, engine: bool = False) -> Family:
    """The family of a transformer (or class, or class name); a clear error naming the adapter to write otherwise.

    engine: also refuse a family the profiler reads but the engine has no block maths for.
    """
    family = find_family(model_or_class)
    name = model_or_class if isinstance(model_or_class, str) else getattr(model_or_class, "__name__", None)
    name = name or type(model_or_class).__name__
    if family is None:
        raise UnsupportedModelError(
            f"model class {name} has no hetcache family adapter (known: {', '.join(known_classes())}).",
            f"write its adapter module: register_family(Family(...)) for {name} and register_block(<block class>, "
            f"BlockAdapter(...)) from hetcache.engine.registry, imported before use ({ADAPTER_DOC}); the profiler "
            "alone already records other diffusers video transformers.",
        )
    if engine and not family.runs_engine:
        raise UnsupportedModelError(
            f"model class {name} ({family.name}) is read by the profiler, but the engine has no block maths for it "
            f"(engine families: {', '.join(known_classes(engine_only=True))}).",
            f"write its block maths and TransformerAdapter in hetcache/engine/{family.name}.py ({ADAPTER_DOC}).",
        )
    return family


def engine_block_adapter(cls: type) -> BlockAdapter | None:
    """The adapter of a block class the engine can run partially, or None."""
    _load_adapters()
    return _BLOCKS.get(cls)


def transformer_adapter(cls: type) -> TransformerAdapter | None:
    """Where the engine finds a transformer class's blocks, head and text embedder (None: not an engine family)."""
    family = find_family(cls)
    return family.layout if family is not None else None


def model_shape(model: torch.nn.Module) -> ModelShape:
    """The `ModelShape` of a built transformer, from its family."""
    return family_of(model).shape(model.config)


def block_adapter(cls: type) -> BlockAdapter:
    """Argument and output layout of any block class: ours, else diffusers' registry, else `hidden_states`."""
    adapter = engine_block_adapter(cls) or _FALLBACKS.get(cls)
    if adapter is not None:
        return adapter
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        meta = TransformerBlockRegistry.get(cls)
        hidden, index = meta.hidden_states_argument_name, meta.return_hidden_states_index
    except ValueError:  # not registered there either
        hidden, index = "hidden_states", 0
    adapter = BlockAdapter(kind=MAIN, arguments={"hidden": hidden}, output_index=index).bind(cls)
    _FALLBACKS[cls] = adapter
    return adapter


def token_grid(model: torch.nn.Module, arguments: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The token grid (T', h, w) of one call of `model` (bound forward arguments), in flattening order; None if the
    family is unknown and the inputs do not say (the one definition every part uses)."""
    family = find_family(model)
    if family is not None:
        return family.call_grid(model.config, arguments)
    hidden = arguments.get("hidden_states")
    config = model.config
    patch = config.get("patch_size") if hasattr(config, "get") else None
    if isinstance(hidden, torch.Tensor) and hidden.ndim == 5 and isinstance(patch, (tuple, list)) and len(patch) == 3:
        _, _, frames, height, width = hidden.shape
        return (frames // patch[0], height // patch[1], width // patch[2])
    return None


def model_token_mask(model: torch.nn.Module, pixel_mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """A pixel mask [F, H, W] / [B, F, H, W] → token mask [B, T', h, w] at `model`'s VAE strides and patch."""
    from ..tokens import pixel_mask_to_token_mask

    family = family_of(model)
    config = model.config
    return pixel_mask_to_token_mask(pixel_mask, family.vae(config), family.shape(config).patch, threshold)


def pipeline_vae(pipe: Any) -> VaeStrides:
    """The compression of a pipeline's own VAE (what decides its latent size), else its transformer family's."""
    for temporal, spatial in (
        ("vae_scale_factor_temporal", "vae_scale_factor_spatial"),  # Wan pipelines
        ("vae_temporal_compression_ratio", "vae_spatial_compression_ratio"),  # LTX-Video pipelines
    ):
        if isinstance(getattr(pipe, spatial, None), int) and isinstance(getattr(pipe, temporal, None), int):
            return VaeStrides(temporal=getattr(pipe, temporal), spatial=getattr(pipe, spatial))
    return family_of(pipe.transformer).vae(pipe.transformer.config)
