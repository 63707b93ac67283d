"""The one place that allocates, places and writes the engine's caches (offload and staging included).

Buffers are allocated when a run starts (or when PARTIAL rows are chosen) and written in place afterwards, so a
denoising step allocates nothing per layer. Offloaded caches (keys, values, skip rows) live in host memory; on
PARTIAL steps each layer reads them from one of two persistent device slots, and while it computes the next cached
layer's caches are copied into the other slot (on a side CUDA stream; plain copies on CPU). Fresh rows are written
back to the host buffers.
"""

from __future__ import annotations

import itertools

import torch

from .config import EngineConfig
from .state import ContextState, LayerCache, Rows, RunState


def _buffer(
    buffer: torch.Tensor | None,
    shape: tuple,
    dtype: torch.dtype,
    device: torch.device,
    pin: bool = False,
    zero: bool = False,
) -> torch.Tensor:
    """`buffer` if it already has this shape, dtype and device, else a new one (uninitialised, or zeros: a forecast
    reads the change between two buffers, scaled by 0 until both were written, which must not be 0 · NaN)."""
    if buffer is not None and tuple(buffer.shape) == shape and buffer.dtype == dtype and buffer.device == device:
        return buffer
    make = torch.zeros if zero else torch.empty
    return make(shape, dtype=dtype, device=device, pin_memory=pin)


def _index_copy(buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """buffer[:, rows] = values, cast to the buffer's dtype and device.

    One-byte float buffers (float8) are written through a uint8 view: index_copy_ has no float8 kernel on CPU.
    """
    values = values.to(buffer.device, buffer.dtype)
    if buffer.dtype.is_floating_point and buffer.element_size() == 1:
        buffer, values = buffer.view(torch.uint8), values.view(torch.uint8)
    buffer.index_copy_(1, rows, values)


def _kinds(layer: LayerCache) -> dict[str, torch.Tensor]:
    """The layer's caches a PARTIAL step reads (no keys/values when the K/V refresh shares one pair of buffers)."""
    kinds = {"key": layer.key, "value": layer.value, "skip": layer.skip, "skip_prev": layer.skip_prev}
    return {kind: tensor for kind, tensor in kinds.items() if tensor is not None}


class CacheBuffers:
    """Allocation and every write of one transformer's caches."""

    def __init__(self, config: EngineConfig, head_dtype: torch.dtype | None, order: tuple[str, ...]) -> None:
        self.config = config
        self.head_dtype = head_dtype or config.model_dtype
        self.order = order  # cached layers in the order a forward runs them
        self.next_of = dict(itertools.pairwise(order))
        self.slot_of = {name: i % 2 for i, name in enumerate(order)}
        self.staging: list[dict[str, torch.Tensor]] = []  # offloaded: per slot, device copies of one layer's caches
        self._holds: list[str | None] = []  # the layer each slot holds in this call
        self._events: list[torch.cuda.Event | None] = []
        self._stream: torch.cuda.Stream | None = None

    # -- allocation (outside the denoising step's hot path) -------------------------------------------------
    def _storage_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu") if self.config.offload else device

    def prepare_context(self, ctx: ContextState, run: RunState, device: torch.device) -> None:
        """Allocate (or keep) one context's buffers for a run of this batch, token and skippable count."""
        cfg = self.config
        batch, tokens, dim = run.batch, run.tokens, cfg.geometry.dim
        stream = (batch, tokens, dim)
        forecast, forecast_skipped = cfg.forecast, cfg.forecast_skipped
        ctx.x_in = _buffer(ctx.x_in, stream, cfg.model_dtype, device)
        ctx.residual = _buffer(ctx.residual, stream, self.head_dtype, device, zero=forecast)
        if forecast:
            ctx.residual_prev = _buffer(ctx.residual_prev, stream, self.head_dtype, device, zero=True)
            ctx.forecast.reuse = _buffer(ctx.forecast.reuse, (), torch.float32, device, zero=True)
        if forecast_skipped:
            ctx.forecast.skip = _buffer(ctx.forecast.skip, (), torch.float32, device, zero=True)
        if cfg.is_vace and (ctx.zero_hint is None or tuple(ctx.zero_hint.shape) != stream):
            ctx.zero_hint = torch.zeros(stream, dtype=cfg.model_dtype, device=device)
        if cfg.capture_features:
            ctx.capture.features = _buffer(ctx.capture.features, stream, cfg.model_dtype, device)
        if cfg.capture_scores:
            ctx.capture.scores = _buffer(ctx.capture.scores, (batch, tokens), torch.float32, device)
        kv = (batch, tokens, cfg.geometry.heads, cfg.geometry.head_dim)
        if run.trim is not None:  # in the model dtype: the trimmed block's attention is the full one's
            model = cfg.model_dtype
            ctx.trim_inside = _buffer(ctx.trim_inside, (batch, run.trim.active.numel(), dim), model, device)
            ctx.trim_outside = _buffer(ctx.trim_outside, (batch, run.trim.skipped.numel(), dim), model, device)
            ctx.trim_key = _buffer(ctx.trim_key, kv, model, device)
            ctx.trim_value = _buffer(ctx.trim_value, kv, model, device)
        skip = (batch, run.clip.skippable.numel(), dim)
        store = self._storage_device(device)
        pin = cfg.offload and device.type == "cuda"
        shared = cfg.refresh_skipped_kv  # PARTIAL steps rewrite every K/V row: shared buffers (prepare_rows)
        for name in self.order:
            layer = ctx.layer(name)
            layer.key = None if shared else _buffer(layer.key, kv, cfg.cache_dtype, store, pin)
            layer.value = None if shared else _buffer(layer.value, kv, cfg.cache_dtype, store, pin)
            layer.skip = _buffer(layer.skip, skip, cfg.cache_dtype, store, pin, zero=forecast_skipped)
            if forecast_skipped:
                layer.skip_prev = _buffer(layer.skip_prev, skip, cfg.cache_dtype, store, pin, zero=True)
            if name.startswith("vace."):
                layer.hint = _buffer(layer.hint, stream, cfg.model_dtype, device)

    def prepare_rows(self, ctx: ContextState, rows: Rows, device: torch.device) -> None:
        """Scratch rows for the active tokens and (offloaded) the staging buffers a PARTIAL step reads."""
        cfg = self.config
        batch, dim = ctx.x_in.shape[0], cfg.geometry.dim
        ctx.scratch = _buffer(ctx.scratch, (batch, rows.active.numel(), dim), cfg.model_dtype, device)
        if cfg.refresh_skipped_kv:
            ctx.skipped_scratch = _buffer(
                ctx.skipped_scratch, (batch, rows.skipped.numel(), dim), cfg.model_dtype, device
            )
            kv = (batch, ctx.x_in.shape[1], cfg.geometry.heads, cfg.geometry.head_dim)
            ctx.shared_key = _buffer(ctx.shared_key, kv, cfg.cache_dtype, device)
            ctx.shared_value = _buffer(ctx.shared_value, kv, cfg.cache_dtype, device)
        if not cfg.offload or not self.order:
            return
        layer = ctx.layers[self.order[0]]
        slots = min(2, len(self.order))  # two when there is a next layer to prefetch while one computes
        old = self.staging + [{}] * (slots - len(self.staging))
        self.staging = [
            {kind: _buffer(old[slot].get(kind), tuple(t.shape), t.dtype, device) for kind, t in _kinds(layer).items()}
            for slot in range(slots)
        ]
        self._holds, self._events = [None] * slots, [None] * slots
        if device.type == "cuda" and self._stream is None:
            self._stream = torch.cuda.Stream(device)

    def staging_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for slot in self.staging for t in slot.values())

    # -- where a PARTIAL layer reads its caches ---------------------------------------------------------------
    def device_caches(self, ctx: ContextState, name: str) -> dict[str, torch.Tensor]:
        """Keys, values and skip rows of layer `name` on the compute device (offloaded: staged, next one prefetched;
        K/V refresh: the shared key/value buffers, every row of which the layer rewrites before reading)."""
        caches = self._stage(ctx, name) if self.config.offload else _kinds(ctx.layers[name])
        if ctx.shared_key is None:
            return caches
        return {**caches, "key": ctx.shared_key, "value": ctx.shared_value}

    def new_call(self) -> None:
        """Host caches may have changed since the last call: no slot holds a valid copy."""
        self._holds = [None] * len(self._holds)

    @torch.compiler.disable
    def _stage(self, ctx: ContextState, name: str) -> dict[str, torch.Tensor]:
        slot = self.slot_of[name]
        if self._holds[slot] != name:  # not prefetched (the first cached layer of a call)
            self._copy(ctx, name, slot)
        if self._events[slot] is not None:
            torch.cuda.current_stream().wait_event(self._events[slot])
        following = self.next_of.get(name)
        if following is not None:
            self._copy(ctx, following, self.slot_of[following])
        return self.staging[slot]

    def _copy(self, ctx: ContextState, name: str, slot: int) -> None:
        """Copy layer `name`'s host caches into `slot`: on a side stream on CUDA (overlapping compute), else now."""
        sources, targets = _kinds(ctx.layers[name]), self.staging[slot]
        if self._stream is None:
            for kind, source in sources.items():
                targets[kind].copy_(source)
        else:
            self._stream.wait_stream(torch.cuda.current_stream())  # the slot's previous reader is done
            with torch.cuda.stream(self._stream):
                for kind, source in sources.items():
                    targets[kind].copy_(source, non_blocking=True)
                self._events[slot] = torch.cuda.Event()
                self._events[slot].record(self._stream)
        self._holds[slot] = name

    # -- FULL steps -----------------------------------------------------------------------------------------
    def keep_input(self, ctx: ContextState, hidden: torch.Tensor) -> None:
        """The first block's input: the base of the whole-stack residual."""
        ctx.x_in.copy_(hidden)

    def keep_residual(self, ctx: ContextState, out: torch.Tensor) -> None:
        """The whole-stack residual (last block output − first block input) that REUSE steps add."""
        if self.config.forecast:
            ctx.residual_prev.copy_(ctx.residual)
        ctx.residual.copy_(out - ctx.x_in.to(out.dtype))

    def reused_residual(self, ctx: ContextState) -> torch.Tensor:
        """What a REUSE step adds: the last computed residual, or (forecast) its linear extrapolation to this step."""
        if not self.config.forecast:
            return ctx.residual
        return ctx.residual + (ctx.residual - ctx.residual_prev) * ctx.forecast.reuse

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
        if self.config.forecast_skipped:  # offloaded: a host copy, after the last FULL step's writes (the timestep
            layer.skip_prev.copy_(layer.skip)  # read synchronised the stream since)
        if layer.key is not None:  # not with the K/V refresh: PARTIAL steps rewrite every row
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

    def gather_skipped(self, ctx: ContextState, tensor: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Rows of the skipped tokens, into the context's second scratch buffer (skipped-token K/V refresh)."""
        return torch.index_select(tensor, 1, rows.skipped, out=ctx.skipped_scratch)

    def write_skipped_kv(
        self, staged: dict[str, torch.Tensor], rows: Rows, key: torch.Tensor, value: torch.Tensor
    ) -> None:
        """The skipped tokens' refreshed keys/values into the shared key/value buffers the active queries read."""
        _index_copy(staged["key"], rows.skipped, key)
        _index_copy(staged["value"], rows.skipped, value)

    def merge_kv(
        self, layer: LayerCache, staged: dict[str, torch.Tensor], rows: Rows, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the active tokens' fresh keys/values into the cache; return the keys/values of all tokens."""
        keys, values = staged["key"], staged["value"]
        _index_copy(keys, rows.active, key)
        _index_copy(values, rows.active, value)
        if self.config.offload and layer.key is not None:
            _index_copy(layer.key, rows.active_stored, key)
            _index_copy(layer.value, rows.active_stored, value)
        return keys, values

    def trim_caches(self, ctx: ContextState) -> dict[str, torch.Tensor]:
        """The key/value pair a trimmed last block attends over (every row rewritten before it is read)."""
        return {"key": ctx.trim_key, "value": ctx.trim_value}

    def merge_trimmed_kv(
        self, staged: dict[str, torch.Tensor], rows: Rows, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inside tokens' keys/values into the trim's pair (the outside rows are written already); all of them."""
        _index_copy(staged["key"], rows.active, key)
        _index_copy(staged["value"], rows.active, value)
        return staged["key"], staged["value"]

    def refresh_skip(self, layer: LayerCache, rows: Rows, computed: torch.Tensor, base: torch.Tensor) -> None:
        """Skip rows of the computed skippable tokens (the first `n_refresh` active ones).

        Not when the skip rows are forecast: their history must hold FULL-step rows only (these rows are computed on
        every PARTIAL step until the next FULL step, which rewrites them all).
        """
        if self.config.forecast_skipped:
            return
        fresh = computed[:, : rows.n_refresh]
        if self.config.residual_fill:
            fresh = fresh - base[:, : rows.n_refresh]
        _index_copy(layer.skip, rows.slots_stored, fresh)

    def fill_skipped(self, ctx: ContextState, staged: dict[str, torch.Tensor], out: torch.Tensor, rows: Rows) -> None:
        """Skipped tokens of `out` (in place): input + cached residual, or the cached output (forecast: either
        extrapolated linearly from the last two FULL steps to this one, unless `cache.forecast_skip_horizon` is 0)."""
        skip = staged["skip"].to(out.dtype)
        if self.config.forecast_skipped:
            # skip + f·(skip − prev) as one lerp (one temporary, not three); weight 1 gives `skip` exactly
            skip = torch.lerp(staged["skip_prev"].to(out.dtype), skip, 1 + ctx.forecast.skip)
        if self.config.residual_fill:
            out.index_add_(1, rows.skippable, skip)
        else:
            out.index_copy_(1, rows.skippable, skip)

    def update_hint(self, layer: LayerCache, rows: Rows, hint_rows: torch.Tensor) -> torch.Tensor:
        return layer.hint.index_copy_(1, rows.active, hint_rows)
