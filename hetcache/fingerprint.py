"""Model fingerprints: a short hash of the architecture fields a cache policy depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .errors import UnsupportedModelError

# Config fields that change what a policy means (layer indices, token grid, cost) for each family.
ARCHITECTURE_FIELDS = (
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "ffn_dim",
    "patch_size",
    "in_channels",
    "text_dim",
    "vace_layers",
    "vace_in_channels",
)

FAMILIES = {
    "WanVACETransformer3DModel": "wan-vace",
    "WanTransformer3DModel": "wan",
}


def model_family(model: torch.nn.Module) -> str:
    """Return the hetcache family name of a transformer, or raise a clear error for unsupported ones."""
    name = type(model).__name__
    if name not in FAMILIES:
        raise UnsupportedModelError(
            f"model class {name} is not supported by the hetcache engine (supported: {', '.join(FAMILIES)}).",
            "pass a Wan2.1/2.2 or Wan-VACE transformer (pipe.transformer); the profiler alone works on other "
            "diffusers video transformers.",
        )
    return FAMILIES[name]


def architecture(model: torch.nn.Module) -> dict[str, Any]:
    """The human-readable architecture fields of a model's config (missing ones are None)."""
    config = getattr(model, "config", {})
    out: dict[str, Any] = {}
    for field in ARCHITECTURE_FIELDS:
        value = config.get(field) if hasattr(config, "get") else getattr(config, field, None)
        out[field] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def fingerprint_of(class_name: str, arch: dict[str, Any]) -> str:
    """Hash of a class name and architecture fields; stable across processes and versions."""
    payload = json.dumps({"class": class_name, **{k: arch.get(k) for k in ARCHITECTURE_FIELDS}}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Fingerprint record of a model: family, class, hash and the readable architecture."""
    arch = architecture(model)
    class_name = type(model).__name__
    return {
        "family": FAMILIES.get(class_name, "unknown"),
        "class": class_name,
        "fingerprint": fingerprint_of(class_name, arch),
        "architecture": arch,
    }
