"""FLOPs and stats: what each transformer call computed, counted after the call from its decision and rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..steps import FULL, PARTIAL, REUSE
from .config import EngineConfig
from .state import ContextState, RunState, TransformerState


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
    trimmed: bool = False  # a FULL step whose last block computed only the tokens inside the latent mask


def call_record(config: EngineConfig, run: RunState, ctx: ContextState, context: str) -> CallRecord:
    """Analytic FLOPs of the call `ctx` just ran: the same layer-by-layer paths the block hooks took."""
    cost, tokens, text_len, batch = config.cost, run.tokens, run.text_len, run.batch
    decision = ctx.decision
    active = {FULL: tokens, REUSE: 0}.get(decision, ctx.rows.active.numel() if ctx.rows is not None else 0)
    flops = cost.embed_head(tokens, text_len, config.is_vace, run.time_rows)
    if ctx.text_fresh:  # the prompt's K/V of every layer hetcache computes itself, once per prompt
        flops += len(config.text_layers) * cost.block(0, 0, text_len, True)["cross_attention"]
    refresh = decision == PARTIAL and config.refresh_skipped_kv
    if decision != REUSE:
        for index in range(config.num_layers):
            body = config.main_layer_uses_body(index) if decision == FULL else index in config.partial_blocks
            partial = decision == PARTIAL and index in config.partial_blocks
            n = active if partial else tokens
            if ctx.trimmed and config.trims(index):  # inside tokens in full, outside ones their keys/values
                n, body = run.trim.active.numel(), True
                flops += cost.skipped_kv(tokens - n)
            flops += sum(cost.block(n, tokens, text_len, not body).values())
            if partial and refresh:
                flops += cost.skipped_kv(tokens - n)
        for index, first in enumerate(config.vace_first):
            cached = index in config.partial_vace
            partial = decision == PARTIAL and cached
            n = active if partial else tokens
            flops += cost.vace_block(n, tokens, text_len, first, not cached)
            if partial and refresh:
                flops += cost.skipped_kv(tokens - n, first_vace=first)
    selection = 0.0
    if decision == FULL and config.capture_scores:
        generative = sum(g.numel() for g in ctx.capture.generative)
        selection = 2.0 * generative * tokens * cost.dim
    return CallRecord(
        context=context,
        step=ctx.last_step,
        decision=decision,
        active=active,
        tokens=tokens,
        flops=flops * batch,
        flops_uncached=cost.uncached_forward(tokens, text_len, batch, run.time_rows),
        selection_flops=selection * batch,
        trimmed=ctx.trimmed,
    )


def run_stats(states: list[TransformerState]) -> dict[str, Any]:
    """Stats of the last run over one or several transformers (Wan2.2's experts share the step index)."""
    calls = [call for state in states for call in state.run.calls]
    first = next((s.run.first_context for s in states if s.run.first_context is not None), None)
    by_step = {c.step: c for c in calls if c.context == first and c.step is not None}
    steps = sorted(by_step)
    flops = sum(c.flops + c.selection_flops for c in calls)
    uncached = sum(c.flops_uncached for c in calls)
    by_context: dict[str, str] = {}
    for call in sorted(calls, key=lambda c: c.step if c.step is not None else -1):
        by_context[call.context] = by_context.get(call.context, "") + call.decision
    lead = states[0].run
    phases: dict[str, float] = {}
    for state in states:
        for name, seconds in state.phase_seconds.items():
            phases[name] = phases.get(name, 0.0) + seconds
    plans = [s.run.plan for s in states]
    return {
        "decisions": "".join(by_step[s].decision for s in steps),
        "decisions_by_context": by_context,
        "plan": plans[0] if len(states) == 1 else None,
        "plans": plans,
        "active_fraction": [by_step[s].active / max(1, by_step[s].tokens) for s in steps],
        "flops": flops,
        "flops_uncached": uncached,
        "flops_fraction": flops / uncached if uncached else math.nan,
        "selection_flops": sum(c.selection_flops for c in calls),
        "trimmed_steps": [s for s in steps if by_step[s].trimmed],
        "cache_bytes": sum(max(s.cache_bytes(), s.bytes_at_last_reset) for s in states),
        "tokens": lead.tokens,
        "token_classes": lead.clip.classes.counts() if lead.clip is not None else {},
        "phase_seconds": phases,
        "notes": [note for s in states for note in s.run.notes],
    }
