"""The runtime engine: full / partial / reuse denoising steps for Wan and Wan-VACE transformers."""

from .apply import HetCacheHandle, apply_hetcache, remove_hetcache

__all__ = ["HetCacheHandle", "apply_hetcache", "remove_hetcache"]
