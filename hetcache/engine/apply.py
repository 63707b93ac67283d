"""`apply_hetcache` / `remove_hetcache`: attach the engine to a Wan or Wan-VACE transformer through diffusers hooks."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry

from ..errors import CacheConflictError, UnsupportedModelError
from ..fingerprint import model_family, model_fingerprint
from ..policy import Policy, check_plan_string, load_policy
from .hooks import (
    BLOCK_HOOK,
    HEAD_HOOK,
    HOOK_NAMES,
    ROOT_HOOK,
    VACE_HOOK,
    HetCacheBlockHook,
    HetCacheHeadHook,
    HetCacheRootHook,
    HetCacheVaceHook,
)
from .session import HetCacheSession, run_stats

SUPPORTED_PROCESSORS = ("WanAttnProcessor",)


class HetCacheHandle:
    """What `apply_hetcache` returns: the policy in force, stats of the last run, and `remove()`."""

    def __init__(self, transformers: list[torch.nn.Module], sessions: list[HetCacheSession]):
        self.transformers = transformers
        self.sessions = sessions

    @property
    def transformer(self) -> torch.nn.Module:
        return self.transformers[0]

    @property
    def session(self) -> HetCacheSession:
        return self.sessions[0]

    @property
    def policy(self) -> Policy:
        return self.session.policy

    def stats(self) -> dict[str, Any]:
        """Stats of the last run: decisions, active_fraction, flops, flops_uncached, cache_bytes, phase times."""
        return run_stats(self.sessions)

    def remove(self) -> None:
        for transformer in self.transformers:
            remove_hetcache(transformer)


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
    model_family(transformer)
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
    blocks = list(transformer.blocks) + list(getattr(transformer, "vace_blocks", []))
    for block in blocks:
        for attn in (block.attn1, block.attn2):
            name = type(attn.processor).__name__
            if name not in SUPPORTED_PROCESSORS:
                raise UnsupportedModelError(
                    f"attention processor {name} is not supported (hetcache computes attention itself).",
                    "restore the default processor (WanAttnProcessor); attention backends are supported.",
                )
        if block.attn2.add_k_proj is not None:
            raise UnsupportedModelError(
                "image-conditioned Wan transformers (I2V, added K/V projections) are not supported yet.",
                "use a Wan T2V or Wan-VACE transformer.",
            )


def apply_hetcache(
    transformer: Any,
    policy: str | os.PathLike | dict | Policy,
    *,
    mask: torch.Tensor | np.ndarray | None = None,
    strict: bool = True,
    plan: str | None = None,
    scheduler: Any = None,
    num_inference_steps: int | None = None,
) -> HetCacheHandle:
    """Hook `transformer` so that each denoising step runs FULL, PARTIAL or REUSE as `policy` says.

    transformer: a WanTransformer3DModel / WanVACETransformer3DModel, or a pipeline (then every transformer of it is
        hooked, Wan2.2's two experts included, and the pipeline's scheduler is used).

    mask: optional for Wan-VACE (read back from `control_hidden_states`); a pixel mask [F, H, W] / [B, F, H, W] or a
        token mask [T', h, w] otherwise.
    strict: refuse a policy tuned for another architecture.
    plan: explicit per-step plan over F/P/R, overriding the policy's step rule.
    scheduler: the pipeline's scheduler; when given, each run's plan is computed from its timesteps before the first
        block runs (else step by step, placing the final FULL steps by `num_inference_steps` or the policy's steps).
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
    sessions = [_attach(t, HetCacheSession(t, policy, mask, plan, scheduler, num_inference_steps)) for t in targets]
    return HetCacheHandle(targets, sessions)


def _attach(transformer: torch.nn.Module, session: HetCacheSession) -> HetCacheSession:
    HookRegistry.check_if_exists_or_initialize(transformer.norm_out).register_hook(HetCacheHeadHook(session), HEAD_HOOK)
    for index, block in enumerate(getattr(transformer, "vace_blocks", [])):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(HetCacheVaceHook(session, index), VACE_HOOK)
    for index, block in enumerate(transformer.blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(HetCacheBlockHook(session, index), BLOCK_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(HetCacheRootHook(session), ROOT_HOOK)
    registry.invalidate_child_registries_cache()
    return session


def remove_hetcache(transformer: Any) -> None:
    """Remove every hetcache hook (of a transformer or of every transformer of a pipeline); behaviour is restored."""
    for target in _transformers_of(transformer):
        registry = getattr(target, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in HOOK_NAMES:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()


__all__ = ["BLOCK_HOOK", "VACE_HOOK", "HetCacheHandle", "apply_hetcache", "remove_hetcache"]
