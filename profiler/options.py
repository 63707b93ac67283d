"""Profiler options, validated once with messages that name the option and the fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hetcache.errors import InputError


@dataclass(frozen=True)
class ProfileOptions:
    """What `profile` records and how.

    layers: blocks to record (None = all; "0,2,5", "vace.1", or a list); attention_every: record attention
    contribution every k-th step (0 = off); attention_chunk: queries per chunk (peak extra memory ≈ 3·H·chunk·N floats);
    degree: degree of the rescaling polynomial; margin_width: token classes' margin (tokens); mask_threshold: share of
    a token's pixels that makes it generative; max_tokens: pool the stored per-token axis above this many tokens;
    small_change: a step whose output changes less than this counts as reusable in the headroom verdict;
    residual: also record the drift of each block's residual; timing: per-layer timings.
    """

    layers: Any = None
    attention_every: int = 5
    attention_chunk: int = 256
    degree: int = 4
    margin_width: int = 2
    mask_threshold: float = 0.0
    max_tokens: int = 16384
    small_change: float = 0.1
    residual: bool = True
    timing: bool = True

    def __post_init__(self) -> None:
        for name, low in (("attention_every", 0), ("attention_chunk", 1), ("degree", 1), ("margin_width", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"option {name}={value!r} must be an integer ≥ {low}.", f"pass {name}={max(low, 1)}.")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 16:
            raise InputError(f"option max_tokens={self.max_tokens!r} must be an integer ≥ 16.", "pass 16384.")
        if not 0.0 <= float(self.mask_threshold) < 1.0:
            raise InputError(f"option mask_threshold={self.mask_threshold!r} must be in [0, 1).", "pass 0.")
        if not float(self.small_change) > 0.0:
            raise InputError(f"option small_change={self.small_change!r} must be positive.", "pass 0.1.")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> ProfileOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(
                f"unknown profile option {', '.join(unknown)}.", f"known options: {', '.join(sorted(known))}."
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["layers"] is not None and not isinstance(data["layers"], str):
            data["layers"] = [str(x) for x in data["layers"]]
        return data
