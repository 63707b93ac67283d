"""Thin diffusers hooks that route the transformer, its blocks and its output norm through a HetCacheSession."""

from __future__ import annotations

import inspect
import time

import torch
from diffusers.hooks import ModelHook

from .session import HetCacheSession

ROOT_HOOK = "hetcache"
BLOCK_HOOK = "hetcache_block"
VACE_HOOK = "hetcache_vace_block"
HEAD_HOOK = "hetcache_head"
HOOK_NAMES = (ROOT_HOOK, BLOCK_HOOK, VACE_HOOK, HEAD_HOOK)


class HetCacheRootHook(ModelHook):
    """On the transformer: decides the step before the forward runs; runs it without autograd."""

    _is_stateful = True

    def __init__(self, session: HetCacheSession):
        super().__init__()
        self.session = session
        self.state_manager = session.contexts  # found by diffusers' cache_context() through vars(hook)
        self._signature: inspect.Signature | None = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._signature = inspect.signature(module.forward)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        started = time.perf_counter()
        bound = self._signature.bind(*args, **kwargs)
        self.session.begin_call(module, bound.arguments)
        with torch.no_grad():
            output = self.fn_ref.original_forward(*args, **kwargs)
        self.session.end_call(started)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.session.reset()
        return module


class HetCacheBlockHook(ModelHook):
    """On `blocks[i]`: full, partial or skipped (REUSE) block forward."""

    def __init__(self, session: HetCacheSession, index: int):
        super().__init__()
        self.session, self.index = session, index

    def new_forward(self, module, hidden_states, encoder_hidden_states, temb, rotary_emb):
        return self.session.main_block(
            self.index, module, self.fn_ref.original_forward, hidden_states, encoder_hidden_states, temb, rotary_emb
        )


class HetCacheVaceHook(ModelHook):
    """On `vace_blocks[i]`: the same for the VACE control stream, with cached hints for skipped tokens."""

    def __init__(self, session: HetCacheSession, index: int):
        super().__init__()
        self.session, self.index = session, index

    def new_forward(self, module, hidden_states, encoder_hidden_states, control_hidden_states, temb, rotary_emb):
        return self.session.vace_block(
            self.index,
            module,
            self.fn_ref.original_forward,
            hidden_states,
            encoder_hidden_states,
            control_hidden_states,
            temb,
            rotary_emb,
        )


class HetCacheHeadHook(ModelHook):
    """On `norm_out`: records the whole-stack residual, or applies it on REUSE steps."""

    def __init__(self, session: HetCacheSession):
        super().__init__()
        self.session = session

    def pre_forward(self, module, hidden_states, *args, **kwargs):
        return (self.session.head_input(hidden_states), *args), kwargs
