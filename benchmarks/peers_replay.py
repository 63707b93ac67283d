"""Correctness checks of a caching method on the real transformer inputs of the workload.

Replay: the same input twice (same branch, consecutive steps), the second call served from the cache as far as the
method allows, must reproduce the first call's output; anything else is error the method adds by construction.
Branches: a cond call then the uncond call of the same step (as WanVACEPipeline makes them) must give the uncond
output of an uncached model; a method whose state is shared between branches leaks the cond branch into it.
When a replay is wrong, the same replay runs on a plain WanTransformer3DModel holding the same main-block weights:
exact there and wrong on Wan-VACE means the VACE hints are the cause (added by the model after each hinted block,
and again inside the reused residual).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from peers_methods import FlopCounter, Point, cachedit_twin, quiet

from hetcache import reference
from hetcache.engine import apply_hetcache
from hetcache.workloads.execute import LoadedWorkload

EXACT = 1e-4  # relative error below which a replay counts as exact (float32 reassociation stays far below)
WRONG = 1e-2  # above this a replay error is a defect of the method, not rounding of a reduced-precision cache
VACE_KWARGS = ("control_hidden_states", "control_hidden_states_scale")


@dataclass
class ReplayResult:
    """The measured errors of one method (relative L2 of the transformer output)."""

    replay_error: float | None
    cached_share: float | None  # FLOPs of the replayed call / FLOPs of a full call: did the cache engage?
    branch_error: float | None
    plain_wan_error: float | None = None
    skipped: str | None = None
    cache_dtype: str | None = None
    default_patterns_share: float | None = None  # TaylorSeer with diffusers' default patterns: share computed

    def note(self) -> str:
        """One sentence for the table."""
        if self.skipped:
            return self.skipped
        parts = []
        if self.cached_share is not None and self.cached_share > 0.95:
            parts.append("replay check vacuous: the method computed the replayed call in full")
        elif self.replay_error <= EXACT:
            parts.append(f"exact: replayed step reproduces ({self.replay_error:.1e})")
        elif self.replay_error <= WRONG:
            storage = f" ({self.cache_dtype} cache)" if self.cache_dtype else ""
            parts.append(f"replayed step off by {self.replay_error:.1e}{storage}")
        else:
            text = f"WRONG on VACE: replayed step off by {self.replay_error:.1%}"
            if self.plain_wan_error is not None and self.plain_wan_error <= EXACT:
                text += f" ({self.plain_wan_error:.1e} on plain Wan: VACE hints added twice)"
            parts.append(text)
        if self.branch_error is not None and self.branch_error > EXACT:
            parts.append(f"uncond branch gets cond's cache (uncond off by {self.branch_error:.1%})")
        if self.default_patterns_share is not None and self.default_patterns_share > 0.95:
            parts.append(
                f"with diffusers' default patterns it hooks no Wan module (replayed call computed "
                f"{self.default_patterns_share:.0%})"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replay_error": self.replay_error,
            "cached_share": self.cached_share,
            "branch_error": self.branch_error,
            "plain_wan_error": self.plain_wan_error,
            "skipped": self.skipped,
            "cache_dtype": self.cache_dtype,
            "default_patterns_share": self.default_patterns_share,
            "note": self.note(),
        }


def _clone(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}


def capture_step_inputs(session: LoadedWorkload, clip, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The transformer kwargs of the cond and the uncond call at `step` of an uncached run of `clip`."""
    calls: list[dict[str, Any]] = []
    wanted = (2 * step, 2 * step + 1)
    seen = [0]

    def hook(module, args, kwargs):
        if seen[0] in wanted:
            calls.append(_clone(kwargs))
        seen[0] += 1

    handle = session.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        session.generate(clip, decode=False)
    finally:
        handle.remove()
    if len(calls) != 2:
        raise RuntimeError(f"expected a cond and an uncond call at step {step}, saw {len(calls)} (guidance off?)")
    return calls[0], calls[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _call(model: torch.nn.Module, kwargs: dict[str, Any], context: str) -> torch.Tensor:
    with torch.no_grad(), model.cache_context(context):
        return model(**{**kwargs, "return_dict": False})[0]


@contextlib.contextmanager
def _forced(point: Point, model: torch.nn.Module, letter: str, branches: bool) -> Iterator[Any]:
    """Attach the point's 'cache the second call' configuration directly to the transformer (hetcache: a plan)."""
    clock = lambda: 500.0  # noqa: E731
    if point.kind == "hetcache":
        with apply_hetcache(model, point.policy, plan="F" + letter, strict=False) as handle:
            yield handle
    elif point.kind == "diffusers":
        model.enable_cache(point.forced(clock))
        try:
            yield None
        finally:
            model.disable_cache()
    else:
        import cache_dit

        config = point.forced(clock)
        config.enable_separate_cfg = branches
        with quiet():
            cache_dit.enable_cache(model, cache_config=config)
        try:
            yield None
        finally:
            with quiet():
                cache_dit.disable_cache(model)


def _replay(point: Point, model: torch.nn.Module, cond: dict[str, Any], letter: str) -> tuple[float, float]:
    """(relative error of the replayed call, its FLOPs as a share of the first, full call)."""
    with _forced(point, model, letter, branches=False) as handle:
        counter = FlopCounter(model)
        try:
            first = _call(model, cond, "cond")
            full = counter.flops
            second = _call(model, cond, "cond")
            computed = counter.flops - full
        finally:
            counter.remove()
        if handle is not None:  # hetcache computes blocks itself: its own FLOPs record is the one to read
            calls = handle.state.run.calls
            full, computed = calls[0].flops, calls[1].flops
    return _rel(second, first), computed / full


def plain_wan_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A WanTransformer3DModel with the VACE model's main weights (no VACE blocks, so no hints)."""
    from diffusers import WanTransformer3DModel

    config = {k: v for k, v in model.config.items() if not k.startswith("_") and not k.startswith("vace")}
    plain = WanTransformer3DModel(**config)
    plain.load_state_dict(model.state_dict(), strict=False)
    return reference.cast_like_from_pretrained(plain.to(device=model.device), model.dtype).eval()


def check(point: Point, session: LoadedWorkload, cond: dict[str, Any], uncond: dict[str, Any]) -> ReplayResult:
    """Replay and branch checks of one point on the captured inputs."""
    if point.unavailable:
        return ReplayResult(None, None, None, skipped=point.unavailable)
    if point.kind in ("uncached", "steps"):
        return ReplayResult(None, None, None, skipped="no cache: exact by construction")
    model = cachedit_twin(session.transformer) if point.kind == "cachedit" else session.transformer
    letters = ["R"]
    if point.kind == "hetcache" and point.policy.layers.partial_blocks != ():
        letters.append("P")
    errors, shares = [], []
    for letter in letters:
        error, share = _replay(point, model, cond, letter)
        errors.append(error)
        shares.append(share)
    reference_uncond = _call(model, uncond, "uncond")
    with _forced(point, model, letters[0], branches=True):
        _call(model, cond, "cond")
        branch_error = _rel(_call(model, uncond, "uncond"), reference_uncond)
    dtype = point.policy.cache.dtype if point.kind == "hetcache" else None
    result = ReplayResult(max(errors), max(shares), branch_error, cache_dtype=dtype if dtype != "auto" else None)
    if "default_patterns" in point.params:
        default = dataclasses.replace(point, forced=point.params["default_patterns"])
        result.default_patterns_share = _replay(default, model, cond, "R")[1]
    if result.replay_error > EXACT and point.kind != "hetcache" and hasattr(model, "vace_blocks"):
        plain = plain_wan_copy(model)
        plain_cond = {k: v for k, v in cond.items() if k not in VACE_KWARGS}
        result.plain_wan_error, _ = _replay(point, plain, plain_cond, "R")
    return result
