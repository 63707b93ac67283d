"""Model fingerprints: a short hash of the architecture fields a cache policy depends on.

Which fields those are is a family fact (`Family.fields` in the registry); a transformer no family adapter knows
(the profiler records any) is fingerprinted by the fields most diffusers video transformers share.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .engine.registry import family_of, find_family

GENERIC_FIELDS = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size", "in_channels")


def model_family(model: torch.nn.Module) -> str:
    """The hetcache family name of a transformer the engine runs, or a clear error naming the adapter to write."""
    return family_of(model, engine=True).name


def _fields(class_name: str) -> tuple[str, ...]:
    family = find_family(class_name)
    return family.fields if family is not None else GENERIC_FIELDS


def architecture(model: torch.nn.Module) -> dict[str, Any]:
    """The human-readable architecture fields of a model's config (missing ones are None)."""
    config = getattr(model, "config", {})
    out: dict[str, Any] = {}
    for field in _fields(type(model).__name__):
        value = config.get(field) if hasattr(config, "get") else getattr(config, field, None)
        out[field] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def fingerprint_of(class_name: str, arch: dict[str, Any]) -> str:
    """Hash of a class name and architecture fields; stable across processes and versions."""
    payload = json.dumps({"class": class_name, **{k: arch.get(k) for k in _fields(class_name)}}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Fingerprint record of a model: family, class, hash and the readable architecture."""
    arch = architecture(model)
    class_name = type(model).__name__
    family = find_family(class_name)
    return {
        "family": family.name if family is not None else "unknown",
        "class": class_name,
        "fingerprint": fingerprint_of(class_name, arch),
        "architecture": arch,
    }
