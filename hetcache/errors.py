"""User-facing errors: each names the input that is wrong and says how to fix it."""

from __future__ import annotations


class HetCacheError(ValueError):
    """Base class of every error hetcache reports to a user (CLI exit code 2)."""

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what} Fix: {fix}")


class PolicyError(HetCacheError):
    """A policy file or dict is malformed, from a newer schema, or unknown."""


class FingerprintMismatchError(PolicyError):
    """A policy was tuned for a different model architecture."""


class InputError(HetCacheError):
    """A video, mask, prompt-embedding or workload input cannot be used as given."""


class UnsupportedModelError(HetCacheError):
    """The model family has no hetcache adapter."""


class CacheConflictError(HetCacheError):
    """Another cache (diffusers' own, or hetcache twice) is already attached to the model."""
