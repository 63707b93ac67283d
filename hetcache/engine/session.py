"""The engine's per-transformer logic: decide each step, classify and select tokens, run blocks full or partial.

Hooks (hooks.py) are thin and call into one `HetCacheSession` per transformer. Host syncs: one per denoising step
(the timestep read by the first cache context of the step), plus one-off ones when a run starts (classification,
plan) and when a selection is refreshed after a FULL step. Nothing syncs per layer.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks.hooks import CacheContext, StateManager

from ..cost import CostModel
from ..dtypes import TORCH_DTYPES
from ..errors import InputError
from ..plan import rescale, resolve_plan, timestep_modulation
from ..policy import Policy
from ..selection import active_tokens, select_context
from ..steps import FULL, PARTIAL, REUSE
from ..tokens import classify_tokens, pixel_mask_to_token_mask, token_mask_from_control
from .state import CallRecord, ContextState, RunState
from .storage import CacheStorage
from .wan_blocks import Rows, block_body, text_kv

DEFAULT_CONTEXT = "default"


@dataclass(frozen=True)
class EngineSettings:
    """A policy resolved against one model: concrete layer sets and dtypes."""

    partial_blocks: frozenset[int]
    partial_vace: frozenset[int]
    selection_layer: int
    capture_features: bool
    capture_scores: bool


class HetCacheSession:
    """Everything hetcache keeps for one transformer; the hooks delegate to it."""

    def __init__(
        self,
        model: torch.nn.Module,
        policy: Policy,
        mask: Any = None,
        plan: str | None = None,
        scheduler: Any = None,
        expected_steps: int | None = None,
    ) -> None:
        config = model.config
        self.policy = policy
        self.mask = None if mask is None else torch.as_tensor(mask)
        self.plan_override = plan
        self.scheduler = scheduler
        self.expected_steps = expected_steps or (policy.workload.steps if policy.workload else None)
        self.cost = CostModel.from_model(model)
        self.patch_size = tuple(config.patch_size)
        self.is_vace = hasattr(model, "vace_blocks")
        num_vace = len(model.vace_blocks) if self.is_vace else 0
        layers = policy.layers
        self.settings = EngineSettings(
            partial_blocks=frozenset(
                range(config.num_layers) if layers.partial_blocks is None else layers.partial_blocks
            ),
            partial_vace=frozenset(
                range(num_vace) if layers.partial_vace_blocks is None else layers.partial_vace_blocks
            ),
            selection_layer=policy.tokens.selection_layer % config.num_layers,
            capture_features=policy.tokens.selection in ("kmeans", "kmeans_attention")
            and policy.tokens.context_ratio > 0,
            capture_scores=policy.tokens.selection in ("attention", "kmeans_attention")
            and policy.tokens.context_ratio > 0,
        )
        self.model_dtype = model.dtype
        self.storage = CacheStorage(TORCH_DTYPES.get(policy.cache.dtype, model.dtype), policy.cache.offload)
        self.contexts = StateManager(ContextState)
        self.run = RunState()
        self.phase_seconds: dict[str, float] = {
            "total": 0.0,
            "engine": 0.0,
            "classify": 0.0,
            "plan": 0.0,
            "select": 0.0,
        }
        self._warned_beyond_plan = False
        self.bytes_at_last_reset = 0

    # ------------------------------------------------------------------------------------------------------
    # contexts and runs

    def context(self) -> ContextState:
        if self.contexts._context is None:
            self.contexts.set_context(CacheContext(name=DEFAULT_CONTEXT))
        return self.contexts.get_state()

    def context_name(self) -> str:
        return self.contexts._context.name if self.contexts._context is not None else DEFAULT_CONTEXT

    def reset(self) -> None:
        """End the run (the pipeline calls this via `_reset_stateful_cache`); its stats stay readable."""
        self.bytes_at_last_reset = self.cache_bytes()
        self.contexts.reset()
        self.run.current_step = None
        self.run.last_t = None

    def _is_follower(self, ctx: ContextState) -> bool:
        run = self.run
        if run.current_step is None:
            return False
        return ctx.run_id != run.run_id or ctx.last_step < run.current_step

    def _starts_new_run(self, t: float) -> bool:
        run = self.run
        if run.run_id < 0 or run.last_t is None:
            return True
        if t > run.last_t + 1e-6:
            return True
        if run.timesteps is not None:
            index = self._index_of(t)
            return index is None or index <= (run.current_step if run.current_step is not None else -1)
        return run.expected_steps is not None and (run.current_step or 0) + 1 >= run.expected_steps

    def _index_of(self, t: float) -> int | None:
        for i, value in enumerate(self.run.timesteps or ()):
            if abs(value - t) <= 1e-4 * max(1.0, abs(value)):
                return i
        return None

    def _start_run(self, model: torch.nn.Module, inputs: dict[str, Any]) -> None:
        previous = self.run
        run = RunState(run_id=previous.run_id + 1, calls=[], notes=[])
        self.run = run
        self.phase_seconds = dict.fromkeys(self.phase_seconds, 0.0)
        hidden = inputs["hidden_states"]
        run.batch = hidden.shape[0]
        run.text_len = inputs["encoder_hidden_states"].shape[1]
        started = time.perf_counter()
        if self.scheduler is not None and getattr(self.scheduler, "timesteps", None) is not None:
            run.timesteps = [float(v) for v in torch.as_tensor(self.scheduler.timesteps).flatten().cpu().tolist()]
            if self.plan_override is not None:
                run.plan = self.plan_override
            else:
                run.plan = resolve_plan(model, torch.tensor(run.timesteps), self.policy.step_plan)
        elif self.plan_override is not None or self.policy.step_plan.rule == "explicit":
            run.plan = self.plan_override or self.policy.step_plan.plan
        run.expected_steps = len(run.plan) if run.plan else self.expected_steps
        if run.plan is None and run.expected_steps is None and self.policy.step_plan.final_full_steps:
            run.notes.append("number of steps unknown: final FULL steps cannot be placed (pass scheduler=)")
        self.phase_seconds["plan"] += time.perf_counter() - started
        started = time.perf_counter()
        self._classify(inputs, hidden)
        self.phase_seconds["classify"] += time.perf_counter() - started

    def _classify(self, inputs: dict[str, Any], hidden: torch.Tensor) -> None:
        run = self.run
        tokens_policy = self.policy.tokens
        grid = tuple(s // p for s, p in zip(hidden.shape[2:], self.patch_size, strict=True))
        if self.mask is not None:
            token_mask = self._explicit_token_mask(grid, hidden)
        elif inputs.get("control_hidden_states") is not None:
            token_mask = token_mask_from_control(
                inputs["control_hidden_states"], self.patch_size, tokens_policy.mask_threshold
            )
        else:
            raise InputError(
                "no edit mask: this transformer has no VACE control states to read it from.",
                "pass mask= (pixel video mask [F, H, W] or token mask [T', h, w]) to apply_hetcache.",
            )
        if token_mask.shape[0] != hidden.shape[0]:
            token_mask = token_mask.expand(hidden.shape[0], *token_mask.shape[1:])
        classes = classify_tokens(token_mask, tokens_policy.margin_width, tokens_policy.margin_frames)
        run.classes = classes
        run.tokens = classes.num_tokens
        generative_any = classes.generative.any(dim=0)
        run.skippable_mask = ~generative_any
        run.skippable = run.skippable_mask.nonzero().squeeze(1)
        run.generative_union = generative_any.nonzero().squeeze(1)
        run.compact_slot = torch.cumsum(run.skippable_mask.long(), 0) - 1
        run.generative_per_item = [
            classes.generative[b].nonzero().squeeze(1) for b in range(classes.generative.shape[0])
        ]
        n_generative = run.generative_union.numel()
        if n_generative == 0:
            run.no_token_savings = (
                "empty mask: no generative tokens, PARTIAL steps run full (timestep-level reuse only)"
            )
        elif n_generative == run.tokens:
            run.no_token_savings = "full mask: every token is generative, PARTIAL steps cannot save tokens"
        if run.no_token_savings:
            run.notes.append(run.no_token_savings)

    def _explicit_token_mask(self, grid: tuple[int, int, int], hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(hidden.device)
        if mask.ndim == 3:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) == grid:
            return mask.bool()
        pixel_grid = (mask.shape[-2] // (8 * self.patch_size[1]), mask.shape[-1] // (8 * self.patch_size[2]))
        if pixel_grid != grid[1:] or (mask.shape[1] - 1) // 4 + 1 != grid[0]:
            raise InputError(
                f"mask of shape {tuple(mask.shape)} matches neither the token grid {grid} nor its pixel size "
                f"({(grid[0] - 1) * 4 + 1} frames x {grid[1] * 16} x {grid[2] * 16}).",
                "pass the pixel mask of the clip being generated, or a token mask of the token grid.",
            )
        return pixel_mask_to_token_mask(mask, self.patch_size, self.policy.tokens.mask_threshold)

    # ------------------------------------------------------------------------------------------------------
    # per call

    def begin_call(self, model: torch.nn.Module, inputs: dict[str, Any]) -> None:
        """Decide this call's step type, start a run if needed, refresh the selection for PARTIAL steps."""
        started = time.perf_counter()
        ctx = self.context()
        name = self.context_name()
        if self._is_follower(ctx):
            step = self.run.current_step
            decision = self.run.decisions[step]
        else:
            timestep = inputs["timestep"]
            t = float(timestep.flatten()[0])  # the one host read of this step
            if self._starts_new_run(t):
                self._start_run(model, inputs)
            run = self.run
            step = (
                self._index_of(t)
                if run.timesteps is not None
                else (0 if run.current_step is None else run.current_step + 1)
            )
            decision = self._decide(model, step, timestep)
            run.decisions[step] = decision
            run.current_step, run.last_t = step, t
        if ctx.run_id != self.run.run_id:
            ctx.begin_run(self.run.run_id)
        if self.run.first_context is None:
            self.run.first_context = name
        if decision != FULL and not ctx.ready:
            decision = FULL
        if decision == PARTIAL and self.run.no_token_savings:
            decision = FULL
        signature = self._text_signature(inputs["encoder_hidden_states"])
        if signature != ctx.text_signature:
            ctx.text_signature = signature
            ctx.text_epoch += 1
        ctx.decision, ctx.last_step = decision, step
        ctx.call_flops = self.cost.embed_head(self.run.tokens, self.run.text_len, self.is_vace) * self.run.batch
        ctx.call_selection_flops = 0.0
        if decision == FULL:
            ctx.selection_stale = True
            ctx.capture.generative = self.run.generative_per_item if self.settings.capture_scores else []
        elif decision == PARTIAL and (ctx.selection_stale or ctx.rows is None):
            self._select(ctx)
        self.phase_seconds["engine"] += time.perf_counter() - started

    def end_call(self, started: float) -> None:
        ctx = self.context()
        run = self.run
        active = {FULL: run.tokens, REUSE: 0}.get(ctx.decision, ctx.rows.active.numel() if ctx.rows is not None else 0)
        run.calls.append(
            CallRecord(
                context=self.context_name(),
                step=ctx.last_step,
                decision=ctx.decision,
                active=active,
                tokens=run.tokens,
                flops=ctx.call_flops,
                flops_uncached=self.cost.uncached_forward(run.tokens, run.text_len, run.batch),
                selection_flops=ctx.call_selection_flops,
            )
        )
        if ctx.decision != REUSE:
            ctx.ready = True
        self.phase_seconds["total"] += time.perf_counter() - started

    def _decide(self, model: torch.nn.Module, step: int | None, timestep: torch.Tensor) -> str:
        run = self.run
        spec = self.policy.step_plan
        if step is None:
            return FULL
        if run.plan is not None:
            if step < len(run.plan):
                return run.plan[step]
            if not self._warned_beyond_plan:
                warnings.warn(
                    f"hetcache: step {step} is beyond the {len(run.plan)}-step plan; running it FULL.", stacklevel=3
                )
                self._warned_beyond_plan = True
            return FULL
        # step by step (timesteps unknown in advance): the same rule, from the modulation of this timestep
        modulation = timestep_modulation(model, timestep.flatten()[:1])
        previous, run.previous_modulation = run.previous_modulation, modulation
        final = run.expected_steps is not None and step >= run.expected_steps - spec.final_full_steps
        if step < spec.warmup_steps or final or previous is None:
            run.accumulated = 0.0
            return FULL
        change = float((modulation - previous).abs().mean() / previous.abs().mean().clamp(min=1e-12))
        run.accumulated += rescale([change], spec.polynomial)[0]
        if run.accumulated < spec.reuse_threshold:
            return REUSE
        decision = PARTIAL if run.accumulated < spec.full_threshold else FULL
        run.accumulated = 0.0
        return decision

    @staticmethod
    def _text_signature(text: torch.Tensor) -> tuple:
        return (text.data_ptr(), tuple(text.shape), text.dtype, text._version)

    def _select(self, ctx: ContextState) -> None:
        started = time.perf_counter()
        run, tokens_policy = self.run, self.policy.tokens
        choice = select_context(
            run.classes,
            tokens_policy.context_ratio,
            tokens_policy.selection,
            features=ctx.capture.features,
            scores=ctx.capture.scores,
            clusters=tokens_policy.clusters,
            seed=tokens_policy.seed,
        )
        active = active_tokens(run.classes, tokens_policy.margin_ratio, choice).any(dim=0)
        refresh = (active & run.skippable_mask).nonzero().squeeze(1)
        active_rows = torch.cat([refresh, run.generative_union])
        slots = run.compact_slot[refresh]
        ctx.rows = Rows(
            active=active_rows,
            n_refresh=refresh.numel(),
            refresh_slots=slots,
            skippable=run.skippable,
            active_stored=self.storage.index(active_rows),
            slots_stored=self.storage.index(slots),
        )
        ctx.rows_step = -1
        ctx.selection_stale = False
        self.phase_seconds["select"] += time.perf_counter() - started

    # ------------------------------------------------------------------------------------------------------
    # blocks

    def _text_kv(self, ctx: ContextState, name: str, attn: torch.nn.Module, text: torch.Tensor):
        layer = ctx.layer(name)
        fresh = layer.text is None or layer.text_epoch != ctx.text_epoch
        if fresh:
            layer.text = text_kv(attn, text)
            layer.text_epoch = ctx.text_epoch
        return layer.text, fresh

    def _rows_for_step(self, ctx: ContextState, rope: tuple[torch.Tensor, torch.Tensor]) -> Rows:
        rows = ctx.rows
        if ctx.rows_step != ctx.last_step:
            rows.cos = rope[0].index_select(1, rows.active)
            rows.sin = rope[1].index_select(1, rows.active)
            ctx.rows_step = ctx.last_step
        return rows

    def _capture(self, ctx: ContextState, index: int):
        if ctx.decision != FULL or index != self.settings.selection_layer:
            return None
        if not (self.settings.capture_features or self.settings.capture_scores):
            return None
        return ctx.capture

    def _fill_skipped(self, out: torch.Tensor, skip: torch.Tensor, rows: Rows) -> None:
        """Skipped tokens: input + cached residual (in place), or the cached output."""
        if self.policy.tokens.skip_fill == "residual":
            out.index_add_(1, rows.skippable, skip.to(out.dtype))
        else:
            out.index_copy_(1, rows.skippable, skip.to(out.dtype))

    def _keep_full(self, layer, out: torch.Tensor, base: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """After a full computation: keep keys, values and the residual (or output) of the skippable tokens."""
        layer.key = self.storage.keep(layer.key, key)
        layer.value = self.storage.keep(layer.value, value)
        source = out - base if self.policy.tokens.skip_fill == "residual" else out
        layer.skip = self.storage.keep(layer.skip, source, self.run.skippable)

    def _partial(self, ctx: ContextState, layer, block, stream_rows, base_rows, temb, rope, kv) -> torch.Tensor:
        """Compute the active tokens against the cached keys/values; refresh the caches of computed tokens."""
        rows = self._rows_for_step(ctx, rope)
        device = stream_rows.device
        cached_kv = (
            self.storage.on_device(layer.key, "key", device),
            self.storage.on_device(layer.value, "value", device),
        )
        computed, key, value = block_body(block, stream_rows, temb, rope, kv, rows, cached_kv)
        self.storage.write_back(layer.key, rows.active_stored, key)
        self.storage.write_back(layer.value, rows.active_stored, value)
        fresh = computed[:, : rows.n_refresh]
        if self.policy.tokens.skip_fill == "residual":
            fresh = fresh - base_rows[:, : rows.n_refresh]
        layer.skip.index_copy_(1, rows.slots_stored, fresh.to(layer.skip.device, layer.skip.dtype))
        return computed

    def _gather(self, ctx: ContextState, tensor: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Rows of the active tokens, into a persistent scratch buffer (one per context, reused by every layer)."""
        shape = (tensor.shape[0], rows.active.numel(), tensor.shape[2])
        if ctx.scratch is None or ctx.scratch.shape != shape or ctx.scratch.dtype != tensor.dtype:
            ctx.scratch = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
        return torch.index_select(tensor, 1, rows.active, out=ctx.scratch)

    def _count(self, ctx: ContextState, active: int, text_fresh: bool, vace_first: bool | None = None) -> None:
        run, cost = self.run, self.cost
        if vace_first is None:
            flops = sum(cost.block(active, run.tokens, run.text_len, text_fresh).values())
        else:
            flops = cost.vace_block(active, run.tokens, run.text_len, vace_first, text_fresh)
        ctx.call_flops += flops * run.batch

    def main_block(self, index: int, block, original, hidden, text, temb, rope) -> torch.Tensor:
        """Forward of main block `index` under the current decision."""
        ctx = self.context()
        decision = ctx.decision
        if decision == REUSE:
            return hidden
        if index == 0:
            ctx.x_in = _store_like(ctx.x_in, hidden)
        cached = index in self.settings.partial_blocks
        capture = self._capture(ctx, index)
        if not cached and capture is None:
            self._count(ctx, self.run.tokens, True)
            return original(hidden, text, temb, rope)
        name = f"block.{index}"
        layer = ctx.layer(name)
        kv, fresh = self._text_kv(ctx, name, block.attn2, text)
        if decision == FULL or not cached:
            out, key, value = block_body(block, hidden, temb, rope, kv, capture=capture)
            if cached:
                self._keep_full(layer, out, hidden, key, value)
            if capture is not None:
                self._record_capture(ctx, capture, out)
            self._count(ctx, self.run.tokens, fresh)
            return out
        rows = ctx.rows
        computed_in = self._gather(ctx, hidden, rows)
        computed = self._partial(ctx, layer, block, computed_in, computed_in, temb, rope, kv)
        self._fill_skipped(hidden, self.storage.on_device(layer.skip, "skip", hidden.device), rows)
        hidden.index_copy_(1, rows.active, computed)
        self._count(ctx, rows.active.numel(), fresh)
        return hidden

    def vace_block(self, index: int, block, original, hidden, text, control, temb, rope):
        """Forward of VACE block `index`: (hint for the main stream, control stream out)."""
        ctx = self.context()
        decision = ctx.decision
        if decision == REUSE:
            ctx.zero_hint = _zeros_like(ctx.zero_hint, hidden)
            return ctx.zero_hint, control
        cached = index in self.settings.partial_vace
        first = block.proj_in is not None
        if not cached:
            self._count(ctx, self.run.tokens, True, first)
            return original(hidden, text, control, temb, rope)
        name = f"vace.{index}"
        layer = ctx.layer(name)
        kv, fresh = self._text_kv(ctx, name, block.attn2, text)
        if decision == FULL:
            base = hidden if first else control
            stream = block.proj_in(control) + hidden if first else control
            out, key, value = block_body(block, stream, temb, rope, kv)
            layer.hint = _store_like(layer.hint, block.proj_out(out))
            self._keep_full(layer, out, base, key, value)
            self._count(ctx, self.run.tokens, fresh, first)
            return layer.hint, out
        rows = ctx.rows
        control_rows = self._gather(ctx, control, rows)
        if first:
            base_rows = hidden.index_select(1, rows.active)
            stream_rows = block.proj_in(control_rows) + base_rows
        else:
            base_rows = stream_rows = control_rows
        computed = self._partial(ctx, layer, block, stream_rows, base_rows, temb, rope, kv)
        layer.hint.index_copy_(1, rows.active, block.proj_out(computed))
        out = control
        if first:
            out.copy_(hidden)
        self._fill_skipped(out, self.storage.on_device(layer.skip, "skip", out.device), rows)
        out.index_copy_(1, rows.active, computed)
        self._count(ctx, rows.active.numel(), fresh, first)
        return layer.hint, out

    def _record_capture(self, ctx: ContextState, capture, out: torch.Tensor) -> None:
        if self.settings.capture_features:
            capture.features = _store_like(capture.features, out)
        if self.settings.capture_scores:
            ctx.call_selection_flops += (
                2.0 * sum(g.numel() for g in capture.generative) * self.run.tokens * self.cost.dim
            )

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """Input of the output norm: on REUSE steps, input + the whole-stack residual of the last computed step."""
        ctx = self.context()
        if ctx.decision == REUSE:
            return hidden + ctx.residual
        ctx.residual = _store_like(ctx.residual, hidden - ctx.x_in.to(hidden.dtype))
        return hidden

    def cache_bytes(self) -> int:
        """Bytes held by every context's buffers and the staging buffers."""
        held = sum(state.nbytes() for state in self.contexts._state_cache.values())
        return held + self.storage.nbytes_staging()

    def stats(self) -> dict[str, Any]:
        """Per-step decisions and active shares, FLOPs, cache memory and phase times of the last run."""
        return run_stats([self])


def run_stats(sessions: list[HetCacheSession]) -> dict[str, Any]:
    """Stats of the last run over one or several transformers (Wan2.2's experts share the step index)."""
    calls = [call for session in sessions for call in session.run.calls]
    first = next((s.run.first_context for s in sessions if s.run.first_context is not None), None)
    by_step = {c.step: c for c in calls if c.context == first and c.step is not None}
    steps = sorted(by_step)
    flops = sum(c.flops + c.selection_flops for c in calls)
    uncached = sum(c.flops_uncached for c in calls)
    by_context: dict[str, str] = {}
    for call in sorted(calls, key=lambda c: c.step if c.step is not None else -1):
        by_context[call.context] = by_context.get(call.context, "") + call.decision
    lead = sessions[0].run
    phases: dict[str, float] = {}
    for session in sessions:
        for name, seconds in session.phase_seconds.items():
            phases[name] = phases.get(name, 0.0) + seconds
    return {
        "decisions": "".join(by_step[s].decision for s in steps),
        "decisions_by_context": by_context,
        "plan": lead.plan if len(sessions) == 1 else None,
        "plans": [s.run.plan for s in sessions],
        "active_fraction": [by_step[s].active / max(1, by_step[s].tokens) for s in steps],
        "flops": flops,
        "flops_uncached": uncached,
        "flops_fraction": flops / uncached if uncached else math.nan,
        "selection_flops": sum(c.selection_flops for c in calls),
        "cache_bytes": sum(max(s.cache_bytes(), s.bytes_at_last_reset) for s in sessions),
        "tokens": lead.tokens,
        "token_classes": lead.classes.counts() if lead.classes is not None else {},
        "phase_seconds": phases,
        "notes": [note for s in sessions for note in s.run.notes],
    }


def _store_like(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype or buffer.device != value.device:
        return value.detach().clone()
    return buffer.copy_(value)


def _zeros_like(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype or buffer.device != value.device:
        return torch.zeros_like(value)
    return buffer
