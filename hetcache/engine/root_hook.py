"""The hook on the transformer: owns runs, steps and the PARTIAL rows; decides each call before any block runs.

Decisions and bookkeeping run eagerly (`torch.compiler.disable`, as diffusers' cache hooks do), so a compiled
transformer traces only the blocks' tensor work. Host syncs: one per denoising step (the timestep read by the
first cache context of the step), plus one-off ones when a run starts (token classes, plan) and when the PARTIAL
rows are refreshed after a FULL step. Nothing syncs per layer.
"""

from __future__ import annotations

import inspect
import time
import warnings
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ..plan import StepRule, relative_l1_changes, resolve_plan, timestep_modulation
from ..steps import FULL, PARTIAL, REUSE
from .accounting import call_record
from .cache_buffers import CacheBuffers
from .clip import clip_tokens, partial_rows
from .state import ContextState, RunState, TransformerState, extrapolation
from .trim import trim_rows, trims


def partial_possible(state: TransformerState) -> bool:
    """Whether a PARTIAL step would skip anything: some block runs partially and the mask leaves tokens to skip."""
    clip = state.run.clip
    return state.config.has_partial_blocks and not (clip is not None and clip.no_token_savings)


def honest_plan(plan: str, state: TransformerState) -> str:
    """The plan as it will run: PARTIAL steps on which every block runs in full are FULL."""
    return plan if partial_possible(state) else plan.replace(PARTIAL, FULL)


class RootHook(ModelHook):
    """On the transformer: starts runs, numbers steps, decides FULL / PARTIAL / REUSE, chooses PARTIAL rows."""

    _is_stateful = True

    def __init__(self, state: TransformerState, buffers: CacheBuffers, scheduler: Any = None) -> None:
        super().__init__()
        self.state = state
        self.state_manager = state.manager  # found by diffusers' cache_context() through vars(hook)
        self.buffers = buffers
        self.scheduler = scheduler
        self._signature: inspect.Signature | None = None
        self._warned_beyond_plan = False

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._signature = inspect.signature(module.forward)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.begin_call(module, args, kwargs)
        with torch.no_grad():
            output = self.fn_ref.original_forward(*args, **kwargs)
        self.end_call()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module

    # -- per call -------------------------------------------------------------------------------------------
    @torch.compiler.disable
    def begin_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Decide this call's step type, start a run if needed, refresh the rows for PARTIAL steps."""
        started = time.perf_counter()
        state = self.state
        inputs = self._signature.bind(*args, **kwargs).arguments
        ctx = state.enter_context()
        self.buffers.new_call()
        if self._is_follower(ctx):
            step = state.run.current_step
            decision = state.run.decisions[step]
        else:
            timestep = inputs["timestep"]
            t = float(timestep.amax())  # the one host read of this step (the noise level of its noisiest tokens)
            if self._starts_new_run(t):
                self._start_run(module, inputs)
            run = state.run
            if run.timesteps is not None:
                step = self._index_of(t)
            else:
                step = 0 if run.current_step is None else run.current_step + 1
            decision = self._decide(module, step, timestep)
            run.decisions[step] = decision
            run.current_step, run.last_t = step, t
        run = state.run
        if ctx.run_id != run.run_id:
            ctx.begin_run(run.run_id)
            self.buffers.prepare_context(ctx, run, inputs["hidden_states"].device)
        if run.first_context is None:
            run.first_context = state.active_name
        signature = _text_signature(inputs["encoder_hidden_states"])
        ctx.text_fresh, ctx.text_signature = signature != ctx.text_signature, signature
        ctx.decision, ctx.last_step = self._runnable(ctx, decision), step
        ctx.trimmed = ctx.decision == FULL and trims(state.config, run, step)
        if ctx.trimmed:
            run.trim.clear_rope()
        if state.config.forecast:
            _advance_forecast(ctx, run.last_t, state.config.forecast_skip_horizon)
        state.phase_seconds["engine"] += time.perf_counter() - started
        ctx.started = started

    def _runnable(self, ctx: ContextState, decision: str) -> str:
        """The decision this context can run: FULL until its caches are filled, and whenever nothing is skipped."""
        run = self.state.run
        if decision != FULL and not ctx.ready:
            decision = FULL
        if decision == PARTIAL and not partial_possible(self.state):
            decision = FULL
        if decision == PARTIAL and (ctx.selection_stale or ctx.rows is None):
            self._select(ctx)
            if ctx.rows.active.numel() == run.tokens:  # every token is computed: a FULL step
                run.plan = run.plan.replace(PARTIAL, FULL) if run.plan else None
                decision = FULL
        if decision == FULL:
            ctx.selection_stale = True
            ctx.capture.generative = run.clip.generative_per_item if self.state.config.capture_scores else []
        elif decision == PARTIAL:
            ctx.rows.clear_rope()
        return decision

    @torch.compiler.disable
    def end_call(self) -> None:
        state = self.state
        ctx = state.active
        state.run.calls.append(call_record(state.config, state.run, ctx, state.active_name))
        if ctx.decision != REUSE:
            ctx.ready = True
        state.phase_seconds["total"] += time.perf_counter() - ctx.started

    # -- runs and steps -------------------------------------------------------------------------------------
    def _is_follower(self, ctx: ContextState) -> bool:
        """A later context (e.g. "uncond") of a step another context already decided."""
        run = self.state.run
        if run.current_step is None:
            return False
        return ctx.run_id != run.run_id or ctx.last_step < run.current_step

    def _starts_new_run(self, t: float) -> bool:
        run = self.state.run
        if run.run_id < 0 or run.last_t is None or t > run.last_t + 1e-6:
            return True
        if run.timesteps is not None:
            index = self._index_of(t)
            return index is None or index <= (run.current_step if run.current_step is not None else -1)
        return run.expected_steps is not None and (run.current_step or 0) + 1 >= run.expected_steps

    def _index_of(self, t: float) -> int | None:
        for i, value in enumerate(self.state.run.timesteps or ()):
            if abs(value - t) <= 1e-4 * max(1.0, abs(value)):
                return i
        return None

    def _start_run(self, model: torch.nn.Module, inputs: dict[str, Any]) -> None:
        state, config = self.state, self.state.config
        run = RunState(run_id=state.run.run_id + 1, calls=[], notes=[])
        state.run = run
        state.phase_seconds = dict.fromkeys(state.phase_seconds, 0.0)
        hidden = inputs["hidden_states"]
        run.batch, run.text_len = hidden.shape[0], inputs["encoder_hidden_states"].shape[1]
        run.time_rows = max(1, inputs["timestep"].numel() // run.batch)  # per-token timesteps: one per token
        started = time.perf_counter()
        spec = config.step_plan
        if self.scheduler is not None and getattr(self.scheduler, "timesteps", None) is not None:
            run.timesteps = [float(v) for v in torch.as_tensor(self.scheduler.timesteps).flatten().cpu().tolist()]
            run.plan = config.plan_override or resolve_plan(model, torch.tensor(run.timesteps), spec)
        elif config.plan_override is not None or spec.rule == "explicit":
            run.plan = config.plan_override or spec.plan
        run.expected_steps = len(run.plan) if run.plan else config.expected_steps
        run.rule = StepRule(spec, run.expected_steps)
        if run.plan is None and run.expected_steps is None:
            run.notes.append("number of steps unknown: the final FULL step cannot be placed (pass scheduler=)")
        state.phase_seconds["plan"] += time.perf_counter() - started
        started = time.perf_counter()
        run.clip = clip_tokens(config, state.mask, inputs)
        if config.trim_discarded:
            grid = config.family.call_grid(config.model_config, inputs)
            run.trim = trim_rows(config, grid, hidden.device)
        if run.clip.no_token_savings:
            run.notes.append(run.clip.no_token_savings)
        if run.plan is not None:
            run.plan = honest_plan(run.plan, state)
        state.phase_seconds["classify"] += time.perf_counter() - started

    def _decide(self, model: torch.nn.Module, step: int | None, timestep: torch.Tensor) -> str:
        run = self.state.run
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
        # timesteps unknown in advance: the plan rule, one step at a time, from this timestep's modulation
        modulation = timestep_modulation(model, timestep.amax().reshape(1))
        previous, run.previous_modulation = run.previous_modulation, modulation
        change = None if previous is None else relative_l1_changes(torch.cat([previous, modulation]))[0]
        return run.rule.decide(step, change)

    def _select(self, ctx: ContextState) -> None:
        started = time.perf_counter()
        ctx.rows = partial_rows(self.state.config, self.state.run.clip, ctx.capture)
        self.buffers.prepare_rows(ctx, ctx.rows, ctx.x_in.device)
        self.state.staging_bytes = self.buffers.staging_bytes()
        ctx.selection_stale = False
        self.state.phase_seconds["select"] += time.perf_counter() - started


def _bounded(factor: float, horizon: float | None) -> float:
    """An extrapolation factor limited to `horizon` FULL-step intervals (None: as it is)."""
    return factor if horizon is None else min(factor, horizon)


def _advance_forecast(ctx: ContextState, t: float, horizon: float | None) -> None:
    """This call's extrapolation factors from the steps computed before it, then its own place in the history.

    PARTIAL steps extrapolate the skip rows over at most `horizon` intervals of the last two FULL steps: after a long
    run of PARTIAL steps an unbounded factor carries one early difference far beyond where it holds
    (benchmarks/forecast_partial.py).
    """
    forecast = ctx.forecast
    if ctx.decision == REUSE:
        forecast.reuse.fill_(extrapolation(forecast.computed, t))
        return
    if ctx.decision == PARTIAL and forecast.skip is not None:  # the skip rows are forecast too
        forecast.skip.fill_(_bounded(extrapolation(forecast.full, t), horizon))
    forecast.computed = [*forecast.computed, t][-2:]
    if ctx.decision == FULL:
        forecast.full = [*forecast.full, t][-2:]


def _text_signature(text: torch.Tensor) -> tuple:
    return (text.data_ptr(), tuple(text.shape), text.dtype, text._version)
