"""What the profiler needs to know about a diffusers video transformer: its blocks, token grid and modulation.

Generic over transformers whose blocks live in `blocks` / `transformer_blocks` (plus Wan-VACE `vace_blocks`) and
whose self-attention is the block's `attn1`; family-specific only where the model's own layout differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hetcache.engine.registry import VACE, block_adapter
from hetcache.errors import InputError, UnsupportedModelError

MAIN_BLOCK_LISTS = ("blocks", "transformer_blocks")
VACE_BLOCK_LIST = "vace_blocks"
WAN_CLASSES = ("WanTransformer3DModel", "WanVACETransformer3DModel")
# Module whose output is the per-step time modulation the blocks consume, and which element of a tuple output.
MODULATION_MODULES = {
    "CogVideoXTransformer3DModel": ("time_embedding", None),
    "LTXVideoTransformer3DModel": ("time_embed", 0),
}
FALLBACK_MODULATION_NAMES = ("time_embedding", "time_embed", "time_proj")


@dataclass(frozen=True)
class Layer:
    """One recorded block: its name ("blocks.3", "vace_blocks.1"), kind ("main" | "vace") and index in its list."""

    name: str
    kind: str
    index: int
    module: torch.nn.Module

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "index": self.index}


def transformer_of(pipe: Any) -> torch.nn.Module:
    """The pipeline's denoising transformer, or a clear error when it has none."""
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise UnsupportedModelError(
            f"pipeline {type(pipe).__name__} has no transformer (pipe.transformer is "
            f"{type(transformer).__name__ if transformer is not None else 'missing'}).",
            "pass a diffusers video pipeline whose denoiser is a transformer (Wan, Wan-VACE, CogVideoX, LTX-Video).",
        )
    return transformer


def all_layers(transformer: torch.nn.Module) -> list[Layer]:
    """Main blocks then VACE blocks, in execution-independent list order."""
    layers: list[Layer] = []
    for list_name in MAIN_BLOCK_LISTS:
        blocks = getattr(transformer, list_name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            layers += [Layer(f"{list_name}.{i}", "main", i, b) for i, b in enumerate(blocks)]
            break
    if not layers:
        raise UnsupportedModelError(
            f"{type(transformer).__name__} has no block list named {' or '.join(MAIN_BLOCK_LISTS)}.",
            "profile a diffusers video transformer whose blocks are in `blocks` or `transformer_blocks`.",
        )
    vace = getattr(transformer, VACE_BLOCK_LIST, None)
    if isinstance(vace, torch.nn.ModuleList):
        layers += [Layer(f"{VACE_BLOCK_LIST}.{i}", "vace", i, b) for i, b in enumerate(vace)]
    return layers


def _parse_layer(token: str, main: list[Layer], vace: list[Layer]) -> Layer:
    """'3' → main block 3; 'vace.1' / 'vace_blocks.1' → VACE block 1; 'blocks.3' / 'transformer_blocks.3' → main."""
    text = token.strip()
    kind, _, number = text.rpartition(".")
    pool, what = main, "main block"
    if kind in ("vace", VACE_BLOCK_LIST):
        pool, what = vace, "VACE block"
    elif kind not in ("", *MAIN_BLOCK_LISTS):
        raise InputError(f"--layers entry '{text}' is not a layer name.", _layers_fix(main, vace))
    try:
        index = int(number)
    except ValueError as exc:
        raise InputError(f"--layers entry '{text}' is not a layer index.", _layers_fix(main, vace)) from exc
    if not 0 <= index < len(pool):
        have = f"{len(pool)} {what}s (0–{len(pool) - 1})" if pool else f"no {what}s"
        raise InputError(f"--layers names {what} {index}, but the transformer has {have}.", _layers_fix(main, vace))
    return pool[index]


def _layers_fix(main: list[Layer], vace: list[Layer]) -> str:
    fix = f"use main block indices 0–{len(main) - 1}"
    if vace:
        fix += f" or VACE blocks vace.0–vace.{len(vace) - 1}"
    return fix + ", comma-separated (e.g. 0,2,5)."


def select_layers(transformer: torch.nn.Module, layers: str | list | tuple | None) -> list[Layer]:
    """The layers to record: all (None), or a comma-separated string / list of indices and names."""
    available = all_layers(transformer)
    if layers is None:
        return available
    main = [layer for layer in available if layer.kind == "main"]
    vace = [layer for layer in available if layer.kind == "vace"]
    tokens = layers.split(",") if isinstance(layers, str) else [str(x) for x in layers]
    tokens = [t for t in tokens if t.strip()]
    if not tokens:
        raise InputError("--layers is empty.", _layers_fix(main, vace))
    chosen = {layer.name: layer for layer in (_parse_layer(t, main, vace) for t in tokens)}
    return [layer for layer in available if layer.name in chosen]


def self_attention(block: torch.nn.Module) -> torch.nn.Module | None:
    """The block's self-attention module (`attn1`, else the first child with an attention processor)."""
    attn = getattr(block, "attn1", None)
    if attn is not None:
        return attn
    for module in block.modules():
        if module is not block and hasattr(module, "processor"):
            return module
    return None


def block_streams(block: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> tuple[torch.Tensor, ...]:
    """(input stream, output stream, recorded output) of one call of `block`, each [B, N, D].

    Arguments and outputs are read through the block registry (by parameter name, per block class). Main blocks:
    the hidden states in and out (CogVideoX returns (video, text): the video part). VACE blocks: the control
    stream in and out; the recorded output is the hint the block adds to the main stream.
    """
    adapter = block_adapter(type(block))
    stream_in = adapter.argument(adapter.stream, args, kwargs)
    stream_out = adapter.stream_out(output)
    if adapter.kind == VACE and output[0] is not None:
        return stream_in, stream_out, output[0]
    return stream_in, stream_out, stream_out


def token_grid(transformer: torch.nn.Module, arguments: dict[str, Any]) -> tuple[int, int, int] | None:
    """The latent token grid (T', h, w) of a transformer call, in the order tokens are flattened; None if unknown."""
    config = transformer.config
    hidden = arguments.get("hidden_states")
    name = type(transformer).__name__
    if name == "LTXVideoTransformer3DModel":
        frames, height, width = (arguments.get(k) for k in ("num_frames", "height", "width"))
        if None in (frames, height, width):
            return None
        pt, p = config.patch_size_t, config.patch_size
        return (int(frames) // pt, int(height) // p, int(width) // p)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 5:
        return None
    if name.startswith("CogVideoX"):
        _, frames, _, height, width = hidden.shape
        p, pt = config.patch_size, config.patch_size_t
        return ((frames + pt - 1) // pt if pt else frames, height // p, width // p)
    patch = config.get("patch_size") if hasattr(config, "get") else None
    if isinstance(patch, (tuple, list)) and len(patch) == 3:
        _, _, frames, height, width = hidden.shape
        return (frames // patch[0], height // patch[1], width // patch[2])
    return None


def grid_tokens(grid: tuple[int, int, int] | None) -> int | None:
    return None if grid is None else math.prod(grid)


def modulation_module(transformer: torch.nn.Module) -> tuple[torch.nn.Module, int | None] | None:
    """For non-Wan families: the module whose output is the time modulation, and the tuple element to take."""
    name, element = MODULATION_MODULES.get(type(transformer).__name__, (None, None))
    candidates = (name,) if name else FALLBACK_MODULATION_NAMES
    for candidate in candidates:
        module = getattr(transformer, candidate, None)
        if isinstance(module, torch.nn.Module):
            return module, element
    return None


def is_wan(transformer: torch.nn.Module) -> bool:
    return type(transformer).__name__ in WAN_CLASSES
