"""The hooks that run each step type on the blocks: one class per block kind, one method per path.

FULL: every token; a cached block keeps its keys, values and skip rows, the selection layer records. Where the
contract discards the output outside the latent mask (`tokens.trim_discarded`, hetcache.engine.trim), the last
block computes every token's keys/values and the rest for the inside tokens only.
PARTIAL: only the active rows, attending over cached keys/values; skipped tokens come from the skip rows (with
`tokens.refresh_skipped_kv`, their keys/values are first recomputed from their block inputs: projections only).
REUSE: blocks are identities (VACE hints are zero) and the head adds the last computed whole-stack residual
(`cache.forecast` "linear": extrapolated in time, as are the skipped tokens' skip rows on PARTIAL steps).
"""

from __future__ import annotations

import functools

import torch
from diffusers.hooks import ModelHook

from ..steps import FULL, PARTIAL, REUSE
from .cache_buffers import CacheBuffers
from .config import main_layer, vace_layer
from .registry import BlockAdapter
from .state import ContextState, LayerCache, Rows, TransformerState


class _BlockHook(ModelHook):
    """Shared by both block kinds: the partial block body against the cached keys and values."""

    def __init__(self, state: TransformerState, buffers: CacheBuffers, adapter: BlockAdapter, name: str) -> None:
        super().__init__()
        self.state, self.buffers, self.adapter, self.name = state, buffers, adapter, name
        self.refresh = state.config.refresh_skipped_kv

    def _refresh_skipped(self, module, staged, rows: Rows, skipped_in: torch.Tensor, temb, rope) -> None:
        """Keys/values of the skipped tokens from their (approximated) block input, written before attention."""
        if rows.skipped_cos is None:  # RoPE tables at the skipped rows, once per call
            rows.skipped_cos = rope[0].index_select(1, rows.skipped)
            rows.skipped_sin = rope[1].index_select(1, rows.skipped)
        key, value = self.adapter.kv(module, skipped_in, temb, (rows.skipped_cos, rows.skipped_sin), rows.skipped)
        self.buffers.write_skipped_kv(staged, rows, key, value)

    def _active_body(self, module, text, rows: Rows, stream_rows, temb, rope, extras, merge_kv) -> torch.Tensor:
        """The block body for the active rows only, attending over the keys/values `merge_kv` assembles."""
        if rows.cos is None:  # RoPE tables at the active rows, once per call
            rows.cos, rows.sin = rope[0].index_select(1, rows.active), rope[1].index_select(1, rows.active)
        out, _, _, _ = self.adapter.body(
            module, stream_rows, temb, (rows.cos, rows.sin), text, active=rows.active, merge_kv=merge_kv, extras=extras
        )
        return out

    def _partial_body(
        self, module, layer: LayerCache, staged, rows: Rows, stream_rows, temb, rope, extras
    ) -> torch.Tensor:
        """PARTIAL: the active rows against the cached keys/values, their own rows replaced by fresh ones."""
        merge = functools.partial(self.buffers.merge_kv, layer, staged, rows)
        return self._active_body(module, layer.text, rows, stream_rows, temb, rope, extras, merge)


class MainBlockHook(_BlockHook):
    """On `blocks[i]`: FULL (hetcache's body where it caches or records, else the block itself), PARTIAL, REUSE."""

    def __init__(self, state: TransformerState, buffers: CacheBuffers, adapter: BlockAdapter, index: int) -> None:
        super().__init__(state, buffers, adapter, main_layer(index))
        config = state.config
        self.first = index == 0
        self.cached = index in config.partial_blocks
        self.body = config.main_layer_uses_body(index)
        self.records = config.captures and index == config.selection_layer
        self.trims = config.trims(index)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        ctx = self.state.active
        hidden = self.adapter.argument("hidden", args, kwargs)
        if ctx.decision == REUSE:
            return hidden
        if self.first:
            self.buffers.keep_input(ctx, hidden)
        if ctx.decision == PARTIAL and self.cached:
            return self.partial(ctx, module, hidden, args, kwargs)
        if self.trims and ctx.trimmed:
            return self.trimmed(ctx, module, hidden, args, kwargs)
        if ctx.decision == FULL and self.body:
            return self.full(ctx, module, hidden, args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def full(self, ctx: ContextState, module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        layer, get = ctx.layers[self.name], self.adapter.argument
        out, key, value, scores = self.adapter.body(
            module,
            hidden,
            get("temb", args, kwargs),
            get("rope", args, kwargs),
            layer.text,
            score_queries=ctx.capture.generative if self.records else None,
            chunk=ctx.capture.chunk,
            extras=self.adapter.extras(args, kwargs),
        )
        if self.cached:
            self.buffers.keep_full(layer, out, hidden, key, value, self.state.run.clip.skippable)
        if self.records:
            self.buffers.keep_capture(ctx, out, scores)
        return out

    def trimmed(self, ctx: ContextState, module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """FULL step whose output outside the latent mask is discarded: the outside tokens' keys/values from their
        (exact) inputs, everything for the inside tokens against all keys; the outside rows keep the block input."""
        layer, rows, get = ctx.layers[self.name], self.state.run.trim, self.adapter.argument
        staged = self.buffers.trim_caches(ctx)
        temb, rope, extras = get("temb", args, kwargs), get("rope", args, kwargs), self.adapter.extras(args, kwargs)
        outside = torch.index_select(hidden, 1, rows.skipped, out=ctx.trim_outside)
        self._refresh_skipped(module, staged, rows, outside, temb, rope)
        inside = torch.index_select(hidden, 1, rows.active, out=ctx.trim_inside)
        merge = functools.partial(self.buffers.merge_trimmed_kv, staged, rows)
        computed = self._active_body(module, layer.text, rows, inside, temb, rope, extras, merge)
        hidden.index_copy_(1, rows.active, computed)
        return hidden

    def partial(self, ctx: ContextState, module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        layer, rows, get = ctx.layers[self.name], ctx.rows, self.adapter.argument
        staged = self.buffers.device_caches(ctx, self.name)
        rows_in = self.buffers.gather(ctx, hidden, rows)
        temb, rope = get("temb", args, kwargs), get("rope", args, kwargs)
        if self.refresh:
            self._refresh_skipped(module, staged, rows, self.buffers.gather_skipped(ctx, hidden, rows), temb, rope)
        computed = self._partial_body(
            module, layer, staged, rows, rows_in, temb, rope, self.adapter.extras(args, kwargs)
        )
        self.buffers.refresh_skip(layer, rows, computed, rows_in)
        self.buffers.fill_skipped(ctx, staged, hidden, rows)
        hidden.index_copy_(1, rows.active, computed)
        return hidden


class VaceBlockHook(_BlockHook):
    """On `vace_blocks[i]`: the same for the VACE control stream; returns (hint, control stream)."""

    def __init__(self, state: TransformerState, buffers: CacheBuffers, adapter: BlockAdapter, index: int) -> None:
        super().__init__(state, buffers, adapter, vace_layer(index))
        self.first = state.config.vace_first[index]
        self.cached = index in state.config.partial_vace

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        ctx = self.state.active
        if ctx.decision == REUSE:
            return ctx.zero_hint, self.adapter.argument("control", args, kwargs)
        if self.cached and ctx.decision == PARTIAL:
            return self.partial(ctx, module, args, kwargs)
        if self.cached:
            return self.full(ctx, module, args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def full(self, ctx: ContextState, module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        layer, get, adapter = ctx.layers[self.name], self.adapter.argument, self.adapter
        hidden, control = get("hidden", args, kwargs), get("control", args, kwargs)
        stream = adapter.project_in(module, control, hidden)
        out, key, value, _ = adapter.body(
            module,
            stream,
            get("temb", args, kwargs),
            get("rope", args, kwargs),
            layer.text,
            extras=adapter.extras(args, kwargs),
        )
        hint = self.buffers.keep_hint(layer, adapter.project_out(module, out))
        base = hidden if self.first else control
        self.buffers.keep_full(layer, out, base, key, value, self.state.run.clip.skippable)
        return hint, out

    def partial(self, ctx: ContextState, module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        layer, rows, get, adapter = ctx.layers[self.name], ctx.rows, self.adapter.argument, self.adapter
        hidden, control = get("hidden", args, kwargs), get("control", args, kwargs)
        staged = self.buffers.device_caches(ctx, self.name)
        temb, rope = get("temb", args, kwargs), get("rope", args, kwargs)
        if self.refresh:
            skipped_in = self.buffers.gather_skipped(ctx, control, rows)
            if self.first:
                skipped_in = adapter.project_in(module, skipped_in, hidden.index_select(1, rows.skipped))
            self._refresh_skipped(module, staged, rows, skipped_in, temb, rope)
        control_rows = self.buffers.gather(ctx, control, rows)
        if self.first:
            base_rows = hidden.index_select(1, rows.active)
            stream_rows = adapter.project_in(module, control_rows, base_rows)
        else:
            base_rows = stream_rows = control_rows
        extras = adapter.extras(args, kwargs)
        computed = self._partial_body(module, layer, staged, rows, stream_rows, temb, rope, extras)
        self.buffers.refresh_skip(layer, rows, computed, base_rows)
        hint = self.buffers.update_hint(layer, rows, adapter.project_out(module, computed))
        out = control
        if self.first:
            out.copy_(hidden)
        self.buffers.fill_skipped(ctx, staged, out, rows)
        out.index_copy_(1, rows.active, computed)
        return hint, out


class HeadHook(ModelHook):
    """On the output norm: keeps the whole-stack residual, or adds it on REUSE steps."""

    def __init__(self, state: TransformerState, buffers: CacheBuffers) -> None:
        super().__init__()
        self.state, self.buffers = state, buffers

    def pre_forward(self, module, hidden, *args, **kwargs):
        ctx = self.state.active
        if ctx.decision == REUSE:
            return (hidden + self.buffers.reused_residual(ctx), *args), kwargs
        self.buffers.keep_residual(ctx, hidden)
        return (hidden, *args), kwargs


class TextHook(ModelHook):
    """On the text embedder: the prompt's cross-attention K/V of every layer hetcache runs itself, once per prompt.

    Runs eagerly: the K/V are computed only when the prompt changed, which a compiled graph must not branch on.
    """

    def __init__(
        self, state: TransformerState, layers: list[tuple[str, torch.nn.Module, BlockAdapter]], index: int | None
    ):
        super().__init__()
        self.state, self.layers, self.index = state, layers, index

    @torch.compiler.disable
    def post_forward(self, module, output):
        ctx = self.state.active
        if ctx.text_fresh:
            text = output if self.index is None else output[self.index]
            for name, block, adapter in self.layers:
                ctx.layer(name).text = adapter.text_kv(block, text)
        return output
