"""FLOPs per layer and per forward: the analytic `CostModel` for engine families, a counted replay for others.

The replay runs the transformer once more on the first recorded call's inputs under
`torch.utils.flop_counter.FlopCounterMode`; attention scores and values are counted from the shapes that reach
SDPA (FlopCounterMode has no formula for every SDPA kernel, e.g. none on CPU), so every backend counts alike.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hetcache.cost import CostModel

from .attention import SDPAObserver
from .families import Layer, all_layers, analytic_flops

LAYER_PARTS = ("self_attention", "cross_attention", "ffn", "vace", "other")
SDPA_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")


def analytic_layer_flops(
    transformer: torch.nn.Module, layers: list[Layer], tokens: int, text_len: int
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-layer parts and the whole-forward split of one forward of an engine family (one batch item)."""
    model = CostModel.from_model(transformer)
    per_layer = []
    for layer in layers:
        parts = dict.fromkeys(LAYER_PARTS, 0.0)
        if layer.kind == "vace":
            parts["vace"] = model.vace_block(tokens, tokens, text_len, first=layer.index == 0)
        else:
            parts.update(model.block(tokens, tokens, text_len))
        per_layer.append(parts)
    split = {**dict.fromkeys(LAYER_PARTS, 0.0), **model.forward(tokens, text_len)}
    return per_layer, split


def _attention_flops(arguments: dict[str, Any]) -> float:
    query, key, value = arguments["query"], arguments["key"], arguments["value"]
    batch, heads, q_len, head_dim = query.shape
    return 2.0 * batch * heads * q_len * key.shape[-2] * (head_dim + value.shape[-1])


@torch.no_grad()
def counted_flops(
    transformer: torch.nn.Module, layers: list[Layer], arguments: dict[str, Any]
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-layer parts and whole-forward split, counted on one replayed forward (batch item share)."""
    names = {module: name for name, module in transformer.named_modules()}
    attention_modules = [m for m in transformer.modules() if hasattr(m, "processor")]
    stack: list[str] = []
    attention = defaultdict(float)
    handles = []

    def enter(module, args) -> None:
        stack.append(names[module])

    def leave(module, args, output) -> None:
        stack.pop()

    for module in attention_modules:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))

    def on_sdpa(arguments: dict[str, Any]) -> None:
        attention[stack[-1] if stack else ""] += _attention_flops(arguments)

    hidden = arguments.get("hidden_states")
    batch = hidden.shape[0] if isinstance(hidden, torch.Tensor) else 1
    call = {k: v for k, v in arguments.items() if k != "kwargs"}
    call.update(arguments.get("kwargs") or {})
    counter = FlopCounterMode(display=False)
    try:
        with counter, SDPAObserver(on_sdpa, first_only=False):
            transformer(**call)
    finally:
        for handle in handles:
            handle.remove()
    prefix = type(transformer).__name__
    counted: dict[str, float] = defaultdict(float)
    for name, ops in counter.get_flop_counts().items():
        key = "" if name in ("Global", prefix) else name.removeprefix(prefix + ".")
        counted[key] += sum(v for op, v in ops.items() if not any(s in str(op) for s in SDPA_OPS))
    for name, value in attention.items():
        parts = name.split(".")
        for depth in range(len(parts) + 1):
            counted[".".join(parts[:depth])] += value

    def total(name: str) -> float:
        return counted.get(name, 0.0) / batch

    def parts_of(layer: Layer) -> dict[str, float]:
        whole = total(layer.name)
        parts = dict.fromkeys(LAYER_PARTS, 0.0)
        if layer.kind == "vace":
            parts["vace"] = whole
        else:
            parts["self_attention"] = total(f"{layer.name}.attn1")
            parts["cross_attention"] = total(f"{layer.name}.attn2")
            parts["ffn"] = total(f"{layer.name}.ff")
            parts["other"] = whole - parts["self_attention"] - parts["cross_attention"] - parts["ffn"]
        return parts

    split = dict.fromkeys(LAYER_PARTS, 0.0)
    for layer in all_layers(transformer):
        for key, value in parts_of(layer).items():
            split[key] += value
    split["embed_head"] = total("") - sum(split.values())
    return [parts_of(layer) for layer in layers], split


def layer_flops(
    transformer: torch.nn.Module, layers: list[Layer], tokens: int, text_len: int, arguments: dict[str, Any] | None
) -> tuple[list[dict[str, float]], dict[str, float], str]:
    """FLOPs per recorded layer and per forward, and how they were obtained."""
    if analytic_flops(transformer):
        per_layer, split = analytic_layer_flops(transformer, layers, tokens, text_len)
        return per_layer, split, "analytic (hetcache.cost.CostModel)"
    if arguments is None:
        return [dict.fromkeys(LAYER_PARTS, float("nan")) for _ in layers], {}, "unavailable"
    try:
        per_layer, split = counted_flops(transformer, layers, arguments)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        unknown = [dict.fromkeys(LAYER_PARTS, float("nan")) for _ in layers]
        return unknown, {}, f"unavailable (replay failed: {str(exc).splitlines()[0]})"
    return per_layer, split, "counted (FlopCounterMode replay of one forward; attention from SDPA shapes)"
