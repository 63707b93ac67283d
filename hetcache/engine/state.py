"""Engine state: what one transformer keeps between calls, per cache context ("cond" / "uncond") and per run.

`TransformerState` is the object the hooks share; `ContextState` holds one context's cache buffers and the current
call's decision (a diffusers `BaseState`, created by its `StateManager`); `RunState` the plan, step and token sets
of the clip, shared by the contexts. Buffers are allocated by `cache_buffers.CacheBuffers` and written only there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from ..plan import StepRule
from ..steps import FULL
from ..tokens import TokenClasses

if TYPE_CHECKING:
    from .accounting import CallRecord
    from .config import EngineConfig

DEFAULT_CONTEXT = "default"


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class Rows:
    """Token index sets of PARTIAL steps (shared by the batch), fixed until the selection is refreshed."""

    active: torch.Tensor  # [Nu] indices of computed tokens; the first `n_refresh` are skippable ones
    n_refresh: int  # computed tokens that are also skippable (their cache rows are refreshed)
    refresh_slots: torch.Tensor  # [n_refresh] their positions in the compact skip buffer
    skippable: torch.Tensor  # [Nk] indices of tokens that may be skipped (never generative)
    skipped: torch.Tensor  # [Ns] indices of the tokens not computed (every token not in `active`)
    active_stored: torch.Tensor  # `active` and `refresh_slots` on the cache's storage device
    slots_stored: torch.Tensor
    cos: torch.Tensor | None = None  # RoPE tables at `active`: cleared per call, filled by the first partial block
    sin: torch.Tensor | None = None
    skipped_cos: torch.Tensor | None = None  # the same at `skipped` (skipped-token K/V refresh only)
    skipped_sin: torch.Tensor | None = None

    def clear_rope(self) -> None:
        """Forget the RoPE tables of the last call (a new call may carry other ones)."""
        self.cos = self.sin = self.skipped_cos = self.skipped_sin = None


@dataclass
class LayerCache:
    """Persistent buffers of one block in one cache context (allocated at run start, written in place)."""

    key: torch.Tensor | None = None  # [B, N, H, d] post-norm, post-RoPE self-attention keys (all tokens)
    value: torch.Tensor | None = None  # [B, N, H, d]
    skip: torch.Tensor | None = None  # [B, Nk, D] residual (or output) of the skippable tokens
    skip_prev: torch.Tensor | None = None  # [B, Nk, D] the same at the FULL step before (forecast only)
    hint: torch.Tensor | None = None  # [B, N, D] VACE hint (conditioning states) of all tokens
    text: tuple[torch.Tensor, torch.Tensor] | None = None  # cross-attention K/V of the prompt

    def nbytes(self) -> int:
        return _nbytes(self.key, self.value, self.skip, self.skip_prev, self.hint, *(self.text or ()))


@dataclass
class Forecast:
    """Timesteps of the last computed steps and the extrapolation factors of this call (first-order forecast).

    `reuse` scales the change of the whole-stack residual between the last two computed steps (FULL or PARTIAL),
    `skip` that of the skip rows between the last two FULL steps; both are 0 until two such steps ran. They are
    0-dim device tensors, filled when a call is decided, so that a compiled graph never sees a new constant.
    """

    computed: list[float] = field(default_factory=list)  # timesteps of the last two computed steps (oldest first)
    full: list[float] = field(default_factory=list)  # timesteps of the last two FULL steps
    reuse: torch.Tensor | None = None
    skip: torch.Tensor | None = None

    def restart(self) -> None:
        self.computed, self.full = [], []


def extrapolation(history: list[float], t: float) -> float:
    """(t − t_last) / (t_last − t_prev) from the last two timesteps of `history`; 0 without two distinct ones."""
    if len(history) < 2 or history[1] == history[0]:
        return 0.0
    return (t - history[1]) / (history[1] - history[0])


@dataclass
class Capture:
    """What the selection layer records on FULL steps for the next selection."""

    features: torch.Tensor | None = None  # [B, N, D] block output
    scores: torch.Tensor | None = None  # [B, N] attention mass of generative queries per key
    generative: list[torch.Tensor] = field(default_factory=list)  # per batch item: generative token indices
    chunk: int = 1024


@dataclass
class ClipTokens:
    """Token classes of the clip being generated and the index sets derived from them (once per run)."""

    classes: TokenClasses
    skippable: torch.Tensor  # [Nk] token indices never generative in any batch item
    skippable_mask: torch.Tensor  # [N] bool
    compact_slot: torch.Tensor  # [N] position of each token in the compact skip buffers
    generative_union: torch.Tensor  # [Ng] indices generative in some batch item
    generative_per_item: list[torch.Tensor]
    no_token_savings: str | None  # why PARTIAL steps run full ("empty mask", "full mask")

    @property
    def tokens(self) -> int:
        return self.classes.num_tokens


class ContextState(BaseState):
    """Per cache context: layer buffers, the whole-stack residual, the selection, this call's decision."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerCache] = {}
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.run_id = -1
        self.last_step = -1
        self.decision = FULL
        self.text_fresh = True  # this call recomputes the prompt's cross-attention K/V
        self.ready = False  # a computed step of this run filled the caches
        self.x_in: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.residual_prev: torch.Tensor | None = None  # the residual of the computed step before (forecast only)
        self.forecast = Forecast()
        self.zero_hint: torch.Tensor | None = None
        self.scratch: torch.Tensor | None = None  # gathered rows of the active tokens
        self.skipped_scratch: torch.Tensor | None = None  # gathered rows of the skipped tokens (K/V refresh)
        # with the K/V refresh every row of a layer's K/V is rewritten before its attention reads them: one pair of
        # buffers shared by every cached layer replaces the per-layer K/V caches
        self.shared_key: torch.Tensor | None = None
        self.shared_value: torch.Tensor | None = None
        # the discard trim (hetcache.engine.trim): this call trims the last block; its gathered rows and the keys/values
        # it attends over (scratch, rewritten on every trimmed step, not caches: not in nbytes, as `scratch`)
        self.trimmed = False
        self.trim_inside: torch.Tensor | None = None
        self.trim_outside: torch.Tensor | None = None
        self.trim_key: torch.Tensor | None = None
        self.trim_value: torch.Tensor | None = None
        self.rows: Rows | None = None
        self.selection_stale = True
        self.capture = Capture()
        self.text_signature: tuple | None = None
        self.started = 0.0

    def begin_run(self, run_id: int) -> None:
        """Invalidate what belongs to the previous run; keep allocated buffers for reuse."""
        self.run_id = run_id
        self.last_step = -1
        self.ready = False
        self.rows = None
        self.selection_stale = True
        self.forecast.restart()
        self.capture = Capture(chunk=self.capture.chunk, features=self.capture.features)
        self.text_signature = None

    def layer(self, name: str) -> LayerCache:
        if name not in self.layers:
            self.layers[name] = LayerCache()
        return self.layers[name]

    def nbytes(self) -> int:
        own = _nbytes(self.x_in, self.residual, self.residual_prev, self.capture.features, self.capture.scores)
        return own + sum(layer.nbytes() for layer in self.layers.values())


@dataclass
class RunState:
    """Shared by all contexts of one transformer: the plan, the step, the token sets of the clip."""

    run_id: int = -1
    timesteps: list[float] | None = None
    plan: str | None = None
    expected_steps: int | None = None
    decisions: dict[int, str] = field(default_factory=dict)
    current_step: int | None = None
    last_t: float | None = None
    rule: StepRule | None = None  # the step rule fed step by step when the timesteps are not known in advance
    previous_modulation: torch.Tensor | None = None
    clip: ClipTokens | None = None
    trim: Rows | None = None  # the discard trim's rows: inside (active) and outside (skipped) the latent mask
    text_len: int = 0
    batch: int = 1
    time_rows: int = 1  # timestep values per sample (LTX conditioning, Wan2.2 TI2V: one per token)
    calls: list[CallRecord] = field(default_factory=list)
    first_context: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.clip.tokens if self.clip is not None else 0


class TransformerState:
    """Everything hetcache keeps for one transformer: the resolved config, the run, the contexts' states."""

    def __init__(self, config: EngineConfig, mask: torch.Tensor | None) -> None:
        self.config = config
        self.mask = mask
        self.manager = StateManager(ContextState)
        self.contexts: dict[str, ContextState] = {}  # the manager's states by name, for stats
        self.run = RunState()
        self.active: ContextState | None = None  # the context of the call in progress (set by the root hook)
        self.active_name = DEFAULT_CONTEXT
        self.phase_seconds = dict.fromkeys(("total", "engine", "classify", "plan", "select"), 0.0)
        self.bytes_at_last_reset = 0
        self.staging_bytes = 0

    @property
    def policy(self):
        return self.config.policy

    def enter_context(self) -> ContextState:
        """The state of the cache context this call runs in (a default one outside `cache_context()`)."""
        try:
            name = self.manager.context.name
        except ValueError:  # called outside `cache_context()`: every call shares one default context
            self.manager.set_context(CacheContext(name=DEFAULT_CONTEXT))
            name = DEFAULT_CONTEXT
        state = self.manager.get_state()
        self.contexts[name] = state
        self.active, self.active_name = state, name
        return state

    def reset(self) -> None:
        """End the run (the pipeline calls this via `_reset_stateful_cache`); its stats stay readable."""
        self.bytes_at_last_reset = self.cache_bytes()
        self.manager.reset()
        self.contexts.clear()
        self.active = None
        self.run.current_step = None
        self.run.last_t = None

    def cache_bytes(self) -> int:
        """Bytes held by every context's buffers and the staging buffers."""
        return sum(state.nbytes() for state in self.contexts.values()) + self.staging_bytes
