"""Block and transformer metadata keyed by class, so hooks read arguments by name, never by position.

A model family is one adapter module that registers its block classes (`register_block`) and transformer classes
(`register_transformer`); `wan.py` is the one for Wan and Wan-VACE. Blocks of other families fall back to
diffusers' `TransformerBlockRegistry` (the profiler records them), then to a generic `hidden_states` reading.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MAIN, VACE = "main", "vace"


@dataclass
class BlockAdapter:
    """What hetcache needs to know about one block class.

    kind: MAIN (returns its stream) or VACE (returns (hint for the main stream, control stream)).
    arguments: role → parameter name of the block's forward (roles: hidden, text, control, temb, rope).
    stream: the role of the stream the block transforms (hidden for main blocks, control for VACE blocks).
    output_index: element of a tuple output that is the stream out (None: the output itself).
    body / kv / text_kv / project_in / project_out: the family's maths (engine only; None where not supported);
    `kv` gives the self-attention keys and values of some rows from their block input (skipped-token refresh).
    """

    kind: str
    arguments: dict[str, str]
    stream: str = "hidden"
    output_index: int | None = None
    body: Callable[..., Any] | None = None
    kv: Callable[..., Any] | None = None
    text_kv: Callable[..., Any] | None = None
    project_in: Callable[..., Any] | None = None
    project_out: Callable[..., Any] | None = None
    positions: dict[str, int] = field(default_factory=dict)

    def bind(self, cls: type) -> BlockAdapter:
        """Record each parameter's position in `cls.forward` (once per class, at registration)."""
        names = list(inspect.signature(cls.forward).parameters)[1:]
        self.positions = {name: i for i, name in enumerate(names)}
        return self

    def argument(self, role: str, args: tuple, kwargs: dict) -> Any:
        """The value of `role` in one call of the block, whether passed by name or by position."""
        name = self.arguments[role]
        if name in kwargs:
            return kwargs[name]
        return args[self.positions[name]]

    def stream_out(self, output: Any) -> torch.Tensor:
        """The stream the block returns."""
        if self.kind == VACE:
            return output[1]
        return output[self.output_index] if isinstance(output, (tuple, list)) else output


@dataclass(frozen=True)
class TransformerAdapter:
    """Where a transformer class keeps its blocks, output norm and text embedder."""

    main_blocks: str
    vace_blocks: str | None
    head: str  # module whose input is the last block's output (the whole-stack residual is taken there)
    head_input_dtype: torch.dtype | None  # dtype the head receives its input in (None: the model's)
    text_embedder: str  # module whose output holds the prompt states every block attends to
    text_output_index: int


_BLOCKS: dict[type, BlockAdapter] = {}
_FALLBACKS: dict[type, BlockAdapter] = {}
_TRANSFORMERS: dict[type, TransformerAdapter] = {}
_loaded = False


def register_block(cls: type, adapter: BlockAdapter) -> None:
    _BLOCKS[cls] = adapter.bind(cls)


def register_transformer(cls: type, adapter: TransformerAdapter) -> None:
    _TRANSFORMERS[cls] = adapter


def _load_adapters() -> None:
    """Import the shipped adapters on first use (they import diffusers model classes)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import wan  # noqa: F401


def engine_block_adapter(cls: type) -> BlockAdapter | None:
    """The adapter of a block class the engine can run partially, or None."""
    _load_adapters()
    return _BLOCKS.get(cls)


def transformer_adapter(cls: type) -> TransformerAdapter | None:
    _load_adapters()
    return _TRANSFORMERS.get(cls)


def block_adapter(cls: type) -> BlockAdapter:
    """Argument and output layout of any block class: ours, else diffusers' registry, else `hidden_states`."""
    adapter = engine_block_adapter(cls) or _FALLBACKS.get(cls)
    if adapter is not None:
        return adapter
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        meta = TransformerBlockRegistry.get(cls)
        hidden, index = meta.hidden_states_argument_name, meta.return_hidden_states_index
    except ValueError:  # not registered there either
        hidden, index = "hidden_states", 0
    adapter = BlockAdapter(kind=MAIN, arguments={"hidden": hidden}, output_index=index).bind(cls)
    _FALLBACKS[cls] = adapter
    return adapter
