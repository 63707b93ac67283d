"""The runtime engine: full / partial / reuse denoising steps for the registered families (Wan, Wan-VACE, LTX-Video).

The public names are imported lazily, so that the family registry (`engine.registry`) can be read by the cost
model, the memory plan and the fingerprint without importing the hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .apply import HetCacheHandle, apply_hetcache, remove_hetcache

_PUBLIC = ("HetCacheHandle", "apply_hetcache", "remove_hetcache")


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        from . import apply

        return getattr(apply, name)
    raise AttributeError(f"module 'hetcache.engine' has no attribute {name!r}")


__all__ = ["HetCacheHandle", "apply_hetcache", "remove_hetcache"]
