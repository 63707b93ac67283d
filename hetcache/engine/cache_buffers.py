"""The one place that allocates, places and writes the engine's caches (offload and staging included).

Buffers are allocated when a run starts (or when PARTIAL rows are chosen) and written in place afterwards, so a
denoising step allocates nothing per layer. Offloaded caches (keys, values, skip rows) live in host memory and are
copied into one persistent device buffer per kind when a layer needs them; fresh rows are written back.
"""

from __future__ import annotations

import torch

from .config import EngineConfig, main_layer, vace_layer
from .state import ContextState, LayerCache, Rows, RunState


def _buffer(
    buffer: torch.Tensor | None, shape: tuple, dtype: torch.dtype, device: torch.device, pin: bool = False
) -> torch.Tensor:
    """`buffer` if it already has this shape, dtype and device, else a new (uninitialised) one."""
    if buffer is not None and tuple(buffer.shape) == shape and buffer.dtype == dtype and buffer.device == device:
        return buffer
    return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin)


def _index_copy(buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """buffer[:, rows] = values, cast to the buffer's dtype and device.

    One-byte float buffers (float8) are written through a uint8 view: index_copy_ has no float8 kernel on CPU.
    """
    values = values.to(buffer.device, buffer.dtype)
    if buffer.dtype.is_floating_point and buffer.element_size() == 1:
        buffer, values = buffer.view(torch.uint8), values.view(torch.uint8)
    buffer.index_copy_(1, rows, values)


class CacheBuffers:
    """Allocation and every write of one transformer's caches."""

    def __init__(self, config: EngineConfig, head_dtype: torch.dtype | None) -> None:
        self.config = config
        self.head_dtype = head_dtype or config.model_dtype
        self.staging: dict[str, torch.Tensor] = {}

    # -- allocation (outside the denoising step's hot path) -------------------------------------------------
    def _storage_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu") if self.config.offload else device

    def prepare_context(self, ctx: ContextState, run: RunState, device: torch.device) -> None:
        """Allocate (or keep) one context's buffers for a run of this batch, token and skippable count."""
        cfg = self.config
        batch, tokens, dim = run.batch, run.tokens, cfg.geometry.dim
        stream = (batch, tokens, dim)
        ctx.x_in = _buffer(ctx.x_in, stream, cfg.model_dtype, device)
        ctx.residual = _buffer(ctx.residual, stream, self.head_dtype, device)
        if cfg.is_vace and (ctx.zero_hint is None or tuple(ctx.zero_hint.shape) != stream):
            ctx.zero_hint = torch.zeros(stream, dtype=cfg.model_dtype, device=device)
        if cfg.capture_features:
            ctx.capture.features = _buffer(ctx.capture.features, stream, cfg.model_dtype, device)
        if cfg.capture_scores:
            ctx.capture.scores = _buffer(ctx.capture.scores, (batch, tokens), torch.float32, device)
        kv = (batch, tokens, cfg.geometry.heads, cfg.geometry.head_dim)
        skip = (batch, run.clip.skippable.numel(), dim)
        store = self._storage_device(device)
        pin = cfg.offload and device.type == "cuda"
        cached = [main_layer(i) for i in sorted(cfg.partial_blocks)] + [vace_layer(i) for i in sorted(cfg.partial_vace)]
        for name in cached:
            layer = ctx.layer(name)
            layer.key = _buffer(layer.key, kv, cfg.cache_dtype, store, pin)
            layer.value = _buffer(layer.value, kv, cfg.cache_dtype, store, pin)
            layer.skip = _buffer(layer.skip, skip, cfg.cache_dtype, store, pin)
            if name.startswith("vace."):
                layer.hint = _buffer(layer.hint, stream, cfg.model_dtype, device)

    def prepare_rows(self, ctx: ContextState, rows: Rows, device: torch.device) -> None:
        """Scratch rows for the active tokens and (offloaded) the staging buffers a PARTIAL step reads."""
        cfg = self.config
        ctx.scratch = _buffer(
            ctx.scratch, (ctx.x_in.shape[0], rows.active.numel(), cfg.geometry.dim), cfg.model_dtype, device
        )
        if not cfg.offload:
            return
        layer = next(iter(ctx.layers.values()), None)
        for kind in ("key", "value", "skip"):
            source = getattr(layer, kind, None) if layer is not None else None
            if source is not None:
                self.staging[kind] = _buffer(self.staging.get(kind), tuple(source.shape), source.dtype, device)

    def staging_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.staging.values())

    def _on_device(self, buffer: torch.Tensor, kind: str) -> torch.Tensor:
        """The buffer itself, or (offloaded) its staged device copy in the shared buffer of its kind."""
        if not self.config.offload:
            return buffer
        return self.staging[kind].copy_(buffer, non_blocking=True)

    # -- FULL steps -----------------------------------------------------------------------------------------
    def keep_input(self, ctx: ContextState, hidden: torch.Tensor) -> None:
        """The first block's input: the base of the whole-stack residual."""
        ctx.x_in.copy_(hidden)

    def keep_residual(self, ctx: ContextState, out: torch.Tensor) -> None:
        """The whole-stack residual (last block output − first block input) that REUSE steps add."""
        ctx.residual.copy_(out - ctx.x_in.to(out.dtype))

    def keep_full(
        self,
        layer: LayerCache,
        out: torch.Tensor,
        base: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        skippable: torch.Tensor,
    ) -> None:
        """After a full computation: keys, values and the residual (or output) of the skippable tokens."""
        offload = self.config.offload
        layer.key.copy_(key, non_blocking=offload)
        layer.value.copy_(value, non_blocking=offload)
        source = out - base if self.config.residual_fill else out
        layer.skip.copy_(source.index_select(1, skippable), non_blocking=offload)

    def keep_hint(self, layer: LayerCache, hint: torch.Tensor) -> torch.Tensor:
        return layer.hint.copy_(hint)

    def keep_capture(self, ctx: ContextState, out: torch.Tensor, scores: torch.Tensor | None) -> None:
        """What the selection layer records for the next selection: its output and/or the attention mass."""
        if self.config.capture_features:
            ctx.capture.features.copy_(out)
        if scores is not None:
            ctx.capture.scores.copy_(scores)

    # -- PARTIAL steps --------------------------------------------------------------------------------------
    def gather(self, ctx: ContextState, tensor: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Rows of the active tokens, into the context's scratch buffer (shared by every layer)."""
        return torch.index_select(tensor, 1, rows.active, out=ctx.scratch)

    def merge_kv(
        self, layer: LayerCache, rows: Rows, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the active tokens' fresh keys/values into the cache; return the keys/values of all tokens."""
        keys, values = self._on_device(layer.key, "key"), self._on_device(layer.value, "value")
        _index_copy(keys, rows.active, key)
        _index_copy(values, rows.active, value)
        if self.config.offload:
            _index_copy(layer.key, rows.active_stored, key)
            _index_copy(layer.value, rows.active_stored, value)
        return keys, values

    def refresh_skip(self, layer: LayerCache, rows: Rows, computed: torch.Tensor, base: torch.Tensor) -> None:
        """Skip rows of the computed skippable tokens (the first `n_refresh` active ones)."""
        fresh = computed[:, : rows.n_refresh]
        if self.config.residual_fill:
            fresh = fresh - base[:, : rows.n_refresh]
        _index_copy(layer.skip, rows.slots_stored, fresh)

    def fill_skipped(self, layer: LayerCache, out: torch.Tensor, rows: Rows) -> None:
        """Skipped tokens of `out` (in place): input + cached residual, or the cached output."""
        skip = self._on_device(layer.skip, "skip").to(out.dtype)
        if self.config.residual_fill:
            out.index_add_(1, rows.skippable, skip)
        else:
            out.index_copy_(1, rows.skippable, skip)

    def update_hint(self, layer: LayerCache, rows: Rows, hint_rows: torch.Tensor) -> torch.Tensor:
        return layer.hint.index_copy_(1, rows.active, hint_rows)
