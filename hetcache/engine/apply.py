"""`apply_hetcache` / `remove_hetcache`: attach the engine to a transformer of a registered family through diffusers
hooks (Wan, Wan-VACE, LTX-Video; `registry` says where each family keeps its blocks, head and text embedder)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..errors import CacheConflictError, UnsupportedModelError
from ..fingerprint import model_fingerprint
from ..policy import Policy, check_plan_string, load_policy
from ..steps import PARTIAL
from .accounting import run_stats
from .block_hooks import HeadHook, MainBlockHook, TextHook, VaceBlockHook
from .cache_buffers import CacheBuffers
from .config import main_layer, resolve_config, vace_layer
from .registry import TransformerAdapter, engine_block_adapter, family_of
from .root_hook import RootHook
from .state import TransformerState
from .trim import Discarded

ROOT_HOOK = "hetcache"
BLOCK_HOOK = "hetcache_block"
VACE_HOOK = "hetcache_vace_block"
HEAD_HOOK = "hetcache_head"
TEXT_HOOK = "hetcache_text"
HOOK_NAMES = (ROOT_HOOK, BLOCK_HOOK, VACE_HOOK, HEAD_HOOK, TEXT_HOOK)


class HetCacheHandle:
    """What `apply_hetcache` returns: the policy in force, stats of the last run, and `remove()`.

    Also a context manager: `with apply_hetcache(pipe, policy) as handle: ...` removes the hooks on leaving the
    block, also when it raises.
    """

    def __init__(self, transformers: list[torch.nn.Module], states: list[TransformerState]):
        self.transformers = transformers
        self.states = states

    @property
    def transformer(self) -> torch.nn.Module:
        return self.transformers[0]

    @property
    def state(self) -> TransformerState:
        """The engine state of the (first) transformer: its run, contexts and resolved config."""
        return self.states[0]

    @property
    def policy(self) -> Policy:
        return self.state.policy

    def stats(self) -> dict[str, Any]:
        """Stats of the last run: decisions, active_fraction, flops, flops_uncached, cache_bytes, phase times."""
        return run_stats(self.states)

    def remove(self) -> None:
        """Remove the hooks from every transformer this handle attached to (the model is restored)."""
        for transformer in self.transformers:
            remove_hetcache(transformer)

    def __enter__(self) -> HetCacheHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _transformers_of(target: Any) -> list[torch.nn.Module]:
    """The transformer itself, or every transformer of a pipeline (Wan2.2: `transformer` and `transformer_2`)."""
    if isinstance(target, torch.nn.Module):
        return [target]
    found = [getattr(target, name, None) for name in ("transformer", "transformer_2")]
    found = [t for t in found if t is not None]
    if not found:
        raise UnsupportedModelError(
            f"{type(target).__name__} is neither a transformer nor a pipeline with one.",
            "pass pipe.transformer or a diffusers pipeline.",
        )
    return found


def _check_model(transformer: torch.nn.Module) -> None:
    """Refuse what the engine cannot run: an unknown family, another cache, blocks or attention it does not restate."""
    family = family_of(transformer, engine=True)
    if getattr(transformer, "is_cache_enabled", False):
        raise CacheConflictError(
            f"a diffusers cache ({type(transformer._cache_config).__name__}) is already enabled on this transformer.",
            "call transformer.disable_cache() before apply_hetcache.",
        )
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and ROOT_HOOK in registry.hooks:
        raise CacheConflictError(
            "hetcache is already applied to this transformer.", "call remove_hetcache(transformer) first."
        )
    for block in _blocks(transformer, family.layout):
        if engine_block_adapter(type(block)) is None:
            raise UnsupportedModelError(
                f"block class {type(block).__name__} has no hetcache adapter.",
                f"register a BlockAdapter for it in the {family.name} family's adapter module (docs/engine.md).",
            )
        for attn in (getattr(block, name) for name in family.attention_modules):
            name = type(attn.processor).__name__
            if name not in family.processors:
                raise UnsupportedModelError(
                    f"attention processor {name} is not supported (hetcache computes attention itself).",
                    f"restore the default processor ({', '.join(family.processors)}); attention backends are "
                    "supported.",
                )
    family.check(transformer)


def _blocks(transformer: torch.nn.Module, layout: TransformerAdapter) -> list[torch.nn.Module]:
    """Main blocks, then VACE blocks (if the family has them)."""
    blocks = list(getattr(transformer, layout.main_blocks))
    return blocks + (list(getattr(transformer, layout.vace_blocks)) if layout.vace_blocks else [])


def apply_hetcache(
    transformer: Any,
    policy: str | os.PathLike | dict | Policy,
    *,
    mask: torch.Tensor | np.ndarray | None = None,
    strict: bool = True,
    plan: str | None = None,
    scheduler: Any = None,
    num_inference_steps: int | None = None,
    discarded: Discarded | None = None,
) -> HetCacheHandle:
    """Hook `transformer` so that each denoising step runs FULL, PARTIAL or REUSE as `policy` says.

    transformer: a transformer of a registered family (WanTransformer3DModel, WanVACETransformer3DModel,
        LTXVideoTransformer3DModel), or a pipeline (then every transformer of it is hooked, Wan2.2's two experts
        included, and the pipeline's scheduler is used).

    mask: optional for Wan-VACE (read back from `control_hidden_states`); a pixel mask [F, H, W] / [B, F, H, W] at
        the pixel size of the clip, or a token mask [T', h, w], otherwise.
    strict: refuse a policy tuned for another architecture.
    plan: explicit per-step plan over F/P/R, overriding the policy's step rule.
    scheduler: the pipeline's scheduler; when given, each run's plan is computed from its timesteps before the first
        block runs (else step by step, placing the final FULL steps by `num_inference_steps` or the policy's steps).
    discarded: what the editing contract throws away of the output (`hetcache.engine.trim.Discarded`: the latent
        edit weights, and whether after every step or the final one); with the policy's `tokens.trim_discarded`, the
        last block of such FULL steps computes only the tokens inside. Without it nothing is trimmed.
    """
    policy = load_policy(policy)
    targets = _transformers_of(transformer)
    if not isinstance(transformer, torch.nn.Module) and scheduler is None:
        scheduler = getattr(transformer, "scheduler", None)
    for target in targets:
        _check_model(target)
        policy.check_model(model_fingerprint(target), strict=strict)
    if plan is not None:
        check_plan_string(plan, "plan")
    states = [_attach(t, policy, mask, plan, scheduler, num_inference_steps, discarded) for t in targets]
    if plan is not None and PARTIAL in plan and not states[0].config.has_partial_blocks:
        warnings.warn(
            f"hetcache: plan {plan!r} has PARTIAL steps but policy {policy.name!r} runs no block partially "
            "(layers.partial_blocks and layers.partial_vace_blocks are empty), so they run FULL; list the blocks "
            "to run partially in the policy's layers, or pass a plan of F and R steps only.",
            stacklevel=2,
        )
    return HetCacheHandle(targets, states)


def _attach(
    transformer: torch.nn.Module,
    policy: Policy,
    mask: Any,
    plan: str | None,
    scheduler: Any,
    expected_steps: int | None,
    discarded: Discarded | None,
) -> TransformerState:
    """Resolve the policy for this transformer and register the root, block, head and text hooks."""
    config = resolve_config(transformer, policy, plan, expected_steps, discarded)
    state = TransformerState(config, None if mask is None else torch.as_tensor(mask))
    layout = config.family.layout
    # the forward runs the VACE blocks (computing the hints) before the main blocks
    order = tuple(vace_layer(i) for i in sorted(config.partial_vace)) + tuple(
        main_layer(i) for i in sorted(config.partial_blocks)
    )
    buffers = CacheBuffers(config, layout.head_input_dtype, order)

    def hook(module: torch.nn.Module, made: ModelHook, name: str) -> None:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(made, name)

    main = list(getattr(transformer, layout.main_blocks))
    vace = list(getattr(transformer, layout.vace_blocks)) if layout.vace_blocks else []
    text_layers = []
    for index, block in enumerate(vace):
        adapter = engine_block_adapter(type(block))
        hook(block, VaceBlockHook(state, buffers, adapter, index), VACE_HOOK)
        if vace_layer(index) in config.text_layers:
            text_layers.append((vace_layer(index), block, adapter))
    for index, block in enumerate(main):
        adapter = engine_block_adapter(type(block))
        hook(block, MainBlockHook(state, buffers, adapter, index), BLOCK_HOOK)
        if main_layer(index) in config.text_layers:
            text_layers.append((main_layer(index), block, adapter))
    hook(getattr(transformer, layout.head), HeadHook(state, buffers), HEAD_HOOK)
    hook(getattr(transformer, layout.text_embedder), TextHook(state, text_layers, layout.text_output_index), TEXT_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(RootHook(state, buffers, scheduler), ROOT_HOOK)
    registry.invalidate_child_registries_cache()
    return state


def remove_hetcache(transformer: Any) -> None:
    """Remove every hetcache hook (of a transformer or of every transformer of a pipeline); behaviour is restored."""
    for target in _transformers_of(transformer):
        registry = getattr(target, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in HOOK_NAMES:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()


__all__ = ["HOOK_NAMES", "HetCacheHandle", "apply_hetcache", "remove_hetcache"]
