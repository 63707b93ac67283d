"""hetcache: training-free heterogeneous caching for masked video-to-video editing with diffusion transformers.

from hetcache import apply_hetcache, load_policy
handle = apply_hetcache(pipe.transformer, "policy.json", scheduler=pipe.scheduler)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "apply_hetcache": "hetcache.engine.apply",
    "remove_hetcache": "hetcache.engine.apply",
    "HetCacheHandle": "hetcache.engine.apply",
    "load_policy": "hetcache.policy",
    "Policy": "hetcache.policy",
    "HetCacheError": "hetcache.errors",
}

if TYPE_CHECKING:
    from .engine.apply import HetCacheHandle, apply_hetcache, remove_hetcache
    from .errors import HetCacheError
    from .policy import Policy, load_policy


def __getattr__(name: str) -> Any:
    """Import the public API lazily, so `hetcache --help` does not load torch and diffusers."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hetcache' has no attribute {name!r}")


__all__ = [
    "HetCacheError",
    "HetCacheHandle",
    "Policy",
    "__version__",
    "apply_hetcache",
    "load_policy",
    "remove_hetcache",
]
