"""Engine state: one `ContextState` per cache context ("cond"/"uncond"), one `RunState` shared by them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks.hooks import BaseState

from ..steps import FULL
from ..tokens import TokenClasses
from .wan_blocks import Capture, LayerCache, Rows


@dataclass
class CallRecord:
    """What one transformer call did (for stats)."""

    context: str
    step: int
    decision: str
    active: int
    tokens: int
    flops: float
    flops_uncached: float
    selection_flops: float = 0.0


class ContextState(BaseState):
    """Per cache context: layer buffers, the residual of the last computed step, the current selection."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerCache] = {}
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.run_id = -1
        self.last_step = -1
        self.decision = FULL
        self.ready = False  # a computed step of this run filled the caches
        self.x_in: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.zero_hint: torch.Tensor | None = None
        self.scratch: torch.Tensor | None = None  # gathered rows of the active tokens
        self.rows: Rows | None = None
        self.rows_step = -1  # step whose RoPE tables `rows` holds
        self.selection_stale = True
        self.capture = Capture()
        self.text_signature: tuple | None = None
        self.text_epoch = 0
        self.call_flops = 0.0
        self.call_selection_flops = 0.0

    def begin_run(self, run_id: int) -> None:
        """Invalidate what belongs to the previous run; keep allocated buffers for reuse."""
        self.run_id = run_id
        self.last_step = -1
        self.ready = False
        self.rows = None
        self.rows_step = -1
        self.selection_stale = True
        self.capture = Capture(chunk=self.capture.chunk)
        self.text_signature = None
        self.text_epoch += 1

    def layer(self, name: str) -> LayerCache:
        if name not in self.layers:
            self.layers[name] = LayerCache()
        return self.layers[name]

    def nbytes(self) -> int:
        tensors = [self.x_in, self.residual, self.capture.features, self.capture.scores]
        own = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return own + sum(layer.nbytes() for layer in self.layers.values())


@dataclass
class RunState:
    """Shared by all contexts of one transformer: the plan, the step, the token classes of the clip."""

    run_id: int = -1
    timesteps: list[float] | None = None
    plan: str | None = None
    expected_steps: int | None = None
    decisions: dict[int, str] = field(default_factory=dict)
    current_step: int | None = None
    last_t: float | None = None
    accumulated: float = 0.0
    previous_modulation: torch.Tensor | None = None
    classes: TokenClasses | None = None
    skippable: torch.Tensor | None = None  # [Nk] token indices never generative in any batch item
    skippable_mask: torch.Tensor | None = None  # [N] bool
    compact_slot: torch.Tensor | None = None  # [N] position of each token in the compact skip buffers
    generative_union: torch.Tensor | None = None  # [Ng] indices generative in some batch item
    generative_per_item: list[torch.Tensor] = field(default_factory=list)
    no_token_savings: str | None = None  # why PARTIAL steps run full ("empty mask", "full mask")
    text_len: int = 0
    tokens: int = 0
    batch: int = 1
    calls: list[CallRecord] = field(default_factory=list)
    first_context: str | None = None
    notes: list[str] = field(default_factory=list)
