"""What the profiler needs to know about a diffusers video transformer: its blocks, token grid and modulation.

Generic over transformers whose blocks live in `blocks` / `transformer_blocks` (plus Wan-VACE `vace_blocks`) and
whose self-attention is the block's `attn1`. Family facts (token grid, timestep modulation, analytic FLOPs) come
from the family registry (`hetcache.engine.registry`); a transformer no adapter knows is still recorded, its
modulation read from a time-embedding module found by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hetcache.engine.registry import VACE, Family, block_adapter, find_family
from hetcache.engine.registry import token_grid as registry_token_grid
from hetcache.errors import InputError, UnsupportedModelError

MAIN_BLOCK_LISTS = ("blocks", "transformer_blocks")
VACE_BLOCK_LIST = "vace_blocks"
# Modules whose output is the per-step time modulation, tried in order on a transformer no family adapter knows.
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
    return registry_token_grid(transformer, arguments)


def modulation_family(transformer: torch.nn.Module) -> Family | None:
    """The family whose adapter computes this transformer's timestep modulation (None: read it from the run)."""
    family = find_family(transformer)
    return family if family is not None and family.timestep_modulation is not None else None


def modulation_module(transformer: torch.nn.Module) -> tuple[torch.nn.Module, int | None] | None:
    """For a transformer no family adapter knows: the time-embedding module to record, and the tuple element."""
    for candidate in FALLBACK_MODULATION_NAMES:
        module = getattr(transformer, candidate, None)
        if isinstance(module, torch.nn.Module):
            return module, 0 if candidate == "time_embed" else None
    return None


def analytic_flops(transformer: torch.nn.Module) -> bool:
    """Whether the cost model counts this transformer's FLOPs (an engine family), else they are replayed."""
    family = find_family(transformer)
    return family is not None and family.runs_engine
