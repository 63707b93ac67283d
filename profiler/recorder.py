"""Hooks that record, per clip, block drift, attention contribution, the step curve's inputs and layer timings.

The transformer gets one stateful diffusers hook (so `cache_context("cond"/"uncond")` names the CFG branch of every
call); blocks and self-attention modules get plain torch forward hooks. All per-layer work stays on the device in
preallocated buffers (no host sync per layer); `detach` removes everything and restores the modules' attributes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from hetcache.errors import CacheConflictError, InputError
from hetcache.tokens import TokenClasses

from .attention import SDPAObserver, generative_key_mass, transient_bytes
from .clock import Clock, LayerTimer
from .families import (
    Layer,
    analytic_flops,
    block_streams,
    modulation_family,
    modulation_module,
    self_attention,
    token_grid,
)
from .masks import classes_from_token_mask, control_token_mask, token_mask_from_pixels
from .options import ProfileOptions

ROOT_HOOK = "hetcache_profiler"
FOREIGN_HOOKS = ("hetcache",)  # the engine's root hook: profile the model uncached
EPS = 1e-12
FP16_MAX = 6.0e4
BRANCH_ORDER = ("cond", "uncond")


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        return None


class ProfilerRootHook(ModelHook):
    """On the transformer: learns the CFG branch from the cache context and brackets each call for the recorder."""

    _is_stateful = True

    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder
        self.contexts = StateManager(_NoState)  # diffusers' cache_context() sets its context through vars(hook)
        self.signature: inspect.Signature | None = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.signature = inspect.signature(module.forward)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        arguments = self.signature.bind(*args, **kwargs).arguments
        try:
            name = self.contexts.context.name
        except ValueError:
            name = None
        self.recorder.begin_call(name, arguments)
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.recorder.end_call(output)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module  # recordings outlive the pipeline's end-of-call reset


def branch_items(context: str | None, batch: int) -> list[tuple[int, str]]:
    """(batch item, CFG branch) pairs of one call: batched CFG ("cond_uncond", [uncond; cond]) or one named branch."""
    if context == "cond_uncond":
        return [(0, "uncond"), (batch // 2, "cond")] if batch >= 2 and batch % 2 == 0 else [(0, "cond")]
    return [(0, context or "cond")]


@dataclass
class Call:
    """The transformer call in flight: which batch items feed which branch at which step."""

    items: list[tuple[int, str, int]]
    batch: int
    attention: tuple[int, int] | None = None  # (batch item, attention slot) when this call records attention


@dataclass
class ClipState:
    """Buffers of the clip being profiled (device tensors, filled without host syncs)."""

    name: str
    expected_steps: int
    layers: int
    attention_every: int
    mask: torch.Tensor | None = None
    grid: tuple[int, int, int] | None = None
    classes: TokenClasses | None = None
    query_index: torch.Tensor | None = None
    num_queries: int = 0
    tokens: int = 0
    text_len: int = 0
    device: torch.device | None = None
    steps: dict[str, int] = field(default_factory=dict)
    drift: dict[str, torch.Tensor] = field(default_factory=dict)
    residual: dict[str, torch.Tensor] = field(default_factory=dict)
    previous: dict[tuple, list] = field(default_factory=dict)
    attention: torch.Tensor | None = None
    attention_text: torch.Tensor | None = None
    attention_seen: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None
    output_change: torch.Tensor | None = None
    previous_output: torch.Tensor | None = None
    modulation: dict[int, torch.Tensor] = field(default_factory=dict)
    capacity: int = 0
    hidden_dim: int = 0
    element_size: int = 4
    heads: int = 0
    keys: int = 0
    started: Any = None
    ended: Any = None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def allocate_steps(self, device: torch.device) -> None:
        """First call of the clip: per-step buffers (timesteps, output change) for the expected number of steps."""
        self.device = device
        self.capacity = self.expected_steps
        self.timesteps = torch.full((self.capacity,), float("nan"), device=device)
        self.output_change = torch.full((self.capacity,), float("nan"), device=device)

    def allocate_tokens(self, tokens: int) -> None:
        """First block call of the clip: per-token attention buffers (drift buffers come per branch)."""
        self.tokens = tokens
        if self.attention_every:
            slots = -(-self.capacity // self.attention_every)
            self.attention = torch.zeros(slots, self.layers, tokens, device=self.device, dtype=torch.float16)
            self.attention_text = torch.zeros(slots, self.layers, device=self.device)
            self.attention_seen = torch.zeros(slots, self.layers, device=self.device, dtype=torch.bool)

    def ensure_step(self, step: int) -> None:
        """Grow every per-step buffer (doubling) when a run has more steps than expected."""
        if step < self.capacity:
            return
        grow = max(self.capacity, step + 1 - self.capacity)
        self.capacity += grow
        for store in (self.drift, self.residual):
            for branch, tensor in store.items():
                store[branch] = _grow(tensor, grow, 0.0)
        self.timesteps = _grow(self.timesteps, grow, float("nan"))
        self.output_change = _grow(self.output_change, grow, float("nan"))
        if self.attention is not None:
            slots = -(-self.capacity // self.attention_every) - self.attention.shape[0]
            if slots > 0:
                self.attention = _grow(self.attention, slots, 0.0)
                self.attention_text = _grow(self.attention_text, slots, 0.0)
                self.attention_seen = _grow(self.attention_seen, slots, False)

    def buffer(self, store: dict[str, torch.Tensor], branch: str) -> torch.Tensor:
        if branch not in store:
            store[branch] = torch.zeros(
                self.capacity, self.layers, self.tokens, device=self.device, dtype=torch.float16
            )
        return store[branch]

    def nbytes(self) -> int:
        """Bytes of the profiler's own buffers for this clip."""
        tensors = [*self.drift.values(), *self.residual.values(), self.attention, self.attention_text]
        tensors += [t for state in self.previous.values() for t in state[:2]]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _grow(tensor: torch.Tensor, rows: int, fill: float | bool) -> torch.Tensor:
    """`tensor` with `rows` more rows of `fill` along its first axis."""
    extra = torch.full((rows, *tensor.shape[1:]), fill, device=tensor.device, dtype=tensor.dtype)
    return torch.cat([tensor, extra])


class Recorder:
    """Attach to a transformer, profile clips one after the other, detach."""

    def __init__(self, transformer: torch.nn.Module, layers: list[Layer], options: ProfileOptions):
        self.transformer = transformer
        self.layers = layers
        self.options = options
        self.device = next(transformer.parameters()).device
        self.clock = Clock(self.device)
        self.timer = LayerTimer(self.clock, len(layers))
        self.clip: ClipState | None = None
        self.call: Call | None = None
        self.branches: list[str] = []
        self.first_call: tuple[dict[str, Any], int] | None = None
        self.attention_observed = False
        self.peak_profiler_bytes = 0
        self.peak_transient_bytes = 0
        self._observer: SDPAObserver | None = None
        self.on_step: Callable[[int], Any] | None = None
        self._handles: list = []
        self._restore: dict[str, bool] = {}
        self._modulation = None if modulation_family(transformer) is not None else modulation_module(transformer)
        self._replay = not analytic_flops(transformer)  # FLOPs replayed on the first call's inputs

    # -- attach / detach -------------------------------------------------------------------------------------
    def attach(self) -> None:
        t = self.transformer
        if getattr(t, "is_cache_enabled", False):
            raise CacheConflictError(
                f"a diffusers cache ({type(t._cache_config).__name__}) is enabled on this transformer.",
                "call transformer.disable_cache() first: the profiler measures the uncached model.",
            )
        registry = getattr(t, "_diffusers_hook", None)
        present = set(registry.hooks) if registry is not None else set()
        if present & {ROOT_HOOK, *FOREIGN_HOOKS}:
            raise CacheConflictError(
                "hetcache (or another profiler run) is attached to this transformer.",
                "call remove_hetcache(transformer) first: the profiler measures the uncached model.",
            )
        self._restore = {"registry": registry is not None, "forward": "forward" in vars(t)}
        registry = HookRegistry.check_if_exists_or_initialize(t)
        registry.register_hook(ProfilerRootHook(self), ROOT_HOOK)
        registry.invalidate_child_registries_cache()
        for pos, layer in enumerate(self.layers):
            module = layer.module
            self._handles.append(
                module.register_forward_pre_hook(functools.partial(self._before_block, pos), with_kwargs=True)
            )
            self._handles.append(
                module.register_forward_hook(functools.partial(self._after_block, pos, layer.kind), with_kwargs=True)
            )
            attn = self_attention(module)
            if attn is not None and self.options.attention_every:
                self._handles.append(attn.register_forward_pre_hook(functools.partial(self._before_attention, pos)))
                self._handles.append(attn.register_forward_hook(self._after_attention, always_call=True))
        if self._modulation is not None:
            self._handles.append(self._modulation[0].register_forward_hook(self._on_modulation))

    def detach(self) -> None:
        """Remove every hook; the transformer is left exactly as before `attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._observer is not None:
            self._observer.__exit__(None, None, None)
            self._observer = None
        t = self.transformer
        registry = getattr(t, "_diffusers_hook", None)
        if registry is None:
            return
        registry.remove_hook(ROOT_HOOK, recurse=False)
        registry.invalidate_child_registries_cache()
        if not registry.hooks:
            if not self._restore.get("forward", False):
                vars(t).pop("forward", None)
            if not self._restore.get("registry", False):
                del t._diffusers_hook

    # -- clips -----------------------------------------------------------------------------------------------
    def begin_clip(self, name: str, expected_steps: int, mask: torch.Tensor | None) -> None:
        self.clip = ClipState(
            name=name,
            expected_steps=max(1, expected_steps),
            layers=len(self.layers),
            attention_every=self.options.attention_every,
            mask=mask,
        )

    def end_clip(self) -> ClipState:
        clip, self.clip = self.clip, None
        self.call = None
        if clip is None or clip.tokens == 0:
            raise InputError(
                f"clip '{clip.name if clip else '?'}' never reached a transformer block.",
                "check that the pipeline call runs the profiled transformer (pipe.transformer).",
            )
        self.peak_profiler_bytes = max(self.peak_profiler_bytes, clip.nbytes())
        clip.previous.clear()
        clip.previous_output = None
        return clip

    # -- transformer calls -----------------------------------------------------------------------------------
    def begin_call(self, context: str | None, arguments: dict[str, Any]) -> None:
        clip = self.clip
        hidden = arguments.get("hidden_states")
        if clip is None or not isinstance(hidden, torch.Tensor):
            self.call = None
            return
        batch = hidden.shape[0]
        if clip.started is None:
            self._setup_clip(clip, arguments, hidden.device)
            clip.started = self.clock.mark()
        if self.first_call is None and self._replay:  # kept for the FLOPs replay (families the cost model lacks)
            self.first_call = (dict(arguments), clip.text_len)
        items = []
        attention = None
        for item, branch in branch_items(context, batch):
            if branch not in self.branches:
                self.branches.append(branch)
                self.branches.sort(key=lambda b: BRANCH_ORDER.index(b) if b in BRANCH_ORDER else len(BRANCH_ORDER))
            step = clip.steps.get(branch, 0)
            clip.steps[branch] = step + 1
            items.append((item, branch, step))
            every = self.options.attention_every
            if branch == "cond" and every and step % every == 0:
                attention = (item, step // every)
        if batch > 1 and context != "cond_uncond":
            clip.note(f"batch of {batch} per call: batch item 0 is recorded")
        self.call = Call(items, batch, attention)
        self._record_timestep(arguments.get("timestep"))

    def end_call(self, output: Any) -> None:
        call, clip = self.call, self.clip
        self.call = None
        if call is None or clip is None or clip.tokens == 0:
            return
        out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
        for item, branch, step in call.items:
            if branch == "cond":
                clip.ensure_step(step)
                value = out[item]
                if clip.previous_output is not None:
                    change = (value - clip.previous_output).abs().mean() / clip.previous_output.abs().mean()
                    clip.output_change[step] = change
                    clip.previous_output.copy_(value)
                else:
                    clip.previous_output = value.detach().clone()
                if self.on_step is not None:
                    self.on_step(1)
        clip.ended = self.clock.mark()

    def _setup_clip(self, clip: ClipState, arguments: dict[str, Any], device: torch.device) -> None:
        """First call of a clip: token grid, text length and token classes (mask given, or read from control)."""
        clip.allocate_steps(device)
        clip.grid = token_grid(self.transformer, arguments)
        text = arguments.get("encoder_hidden_states")
        clip.text_len = int(text.shape[1]) if isinstance(text, torch.Tensor) and text.ndim == 3 else 0
        token_mask = None
        if clip.mask is not None:
            if clip.grid is None:
                raise InputError(
                    f"cannot map the mask of clip '{clip.name}' to {type(self.transformer).__name__}'s tokens.",
                    "pass a token mask [T', h, w] in the model's token order, or no mask.",
                )
            token_mask = token_mask_from_pixels(
                self.transformer, clip.mask.to(device), clip.grid, self.options.mask_threshold
            )
        else:
            token_mask = control_token_mask(self.transformer, arguments.get("control_hidden_states"))
        if token_mask is not None:
            what = f"the mask of clip '{clip.name}'"
            clip.classes = classes_from_token_mask(token_mask, self.options.margin_width, what)
            clip.query_index = clip.classes.generative[0].nonzero().squeeze(1)
            clip.num_queries = int(clip.query_index.numel())

    def _record_timestep(self, timestep: Any) -> None:
        clip, call = self.clip, self.call
        if timestep is None:
            return
        value = torch.as_tensor(timestep, device=clip.device)
        for item, branch, step in call.items:
            if branch != "cond":
                continue
            clip.ensure_step(step)
            flat = value.reshape(call.batch, -1)[item, 0] if value.numel() % call.batch == 0 and value.ndim else value
            clip.timesteps[step] = flat.reshape(()).float()

    # -- blocks ----------------------------------------------------------------------------------------------
    def _before_block(self, pos: int, module, args, kwargs) -> None:
        if self.call is None:
            return
        if self.clip.tokens == 0:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self._first_block(self.clip, hidden)
        if self.options.timing:
            self.timer.start(pos)

    def _after_block(self, pos: int, kind: str, module, args, kwargs, output) -> None:
        call, clip = self.call, self.clip
        if call is None or clip is None:
            return
        if self.options.timing:
            self.timer.stop(pos)
        stream_in, stream_out, recorded = block_streams(module, args, kwargs, output)
        if recorded.shape[1] != clip.tokens:
            clip.note(f"{self.layers[pos].name}: {recorded.shape[1]} tokens instead of {clip.tokens}; not recorded")
            return
        residual = self.options.residual and stream_in.shape == stream_out.shape
        for item, branch, step in call.items:
            clip.ensure_step(step)
            self._update(clip, clip.buffer(clip.drift, branch), ("out", branch, pos), step, pos, recorded[item], True)
            if residual:
                delta = stream_out[item] - stream_in[item]
                self._update(clip, clip.buffer(clip.residual, branch), ("res", branch, pos), step, pos, delta, False)

    def _first_block(self, clip: ClipState, hidden: torch.Tensor) -> None:
        """Token count, width and per-token buffers, from the first block input of the clip."""
        tokens = hidden.shape[1]
        clip.hidden_dim, clip.element_size = hidden.shape[-1], hidden.element_size()
        if clip.classes is not None and clip.classes.num_tokens != tokens:
            raise InputError(
                f"the mask of clip '{clip.name}' gives {clip.classes.num_tokens} tokens, the model runs {tokens}.",
                "pass a mask with the video's frame count and size.",
            )
        if clip.grid is not None and clip.grid[0] * clip.grid[1] * clip.grid[2] != tokens:
            clip.note(f"token grid {clip.grid} does not match {tokens} tokens; stored tokens are not pooled by grid")
            clip.grid = None
        clip.allocate_tokens(tokens)
        if clip.num_queries == 0:
            clip.num_queries = tokens

    @staticmethod
    def _update(clip: ClipState, buffer, key, step: int, pos: int, value: torch.Tensor, copy: bool) -> None:
        """drift[step, pos] = |value − previous|₁ / |previous|₁ per token (on the device), then remember value."""
        norm = torch.linalg.vector_norm(value, ord=1, dim=-1, dtype=torch.float32)
        state = clip.previous.get(key)
        if state is None:
            clip.previous[key] = [value.detach().clone() if copy else value, norm, step]
            return
        if state[2] == step - 1:
            diff = torch.linalg.vector_norm(value - state[0], ord=1, dim=-1, dtype=torch.float32)
            buffer[step, pos].copy_(diff.div_(state[1].clamp_min(EPS)).clamp_(max=FP16_MAX))
        if copy:
            state[0].copy_(value)
        else:
            state[0] = value
        state[1], state[2] = norm, step

    # -- attention -------------------------------------------------------------------------------------------
    def _before_attention(self, pos: int, module, args) -> None:
        call, clip = self.call, self.clip
        if call is None or call.attention is None or clip is None or clip.attention is None:
            return
        self._observer = SDPAObserver(functools.partial(self._on_sdpa, pos, call.attention))
        self._observer.__enter__()

    def _after_attention(self, module, args, output) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.__exit__(None, None, None)

    def _on_sdpa(self, pos: int, target: tuple[int, int], arguments: dict[str, Any]) -> None:
        clip = self.clip
        query, key = arguments["query"], arguments["key"]
        tokens = clip.tokens
        if query.ndim != 4 or query.shape[2] < tokens or key.shape[2] < tokens:
            clip.note(f"{self.layers[pos].name}: attention layout {tuple(query.shape)} not understood; not recorded")
            return
        if arguments.get("attn_mask") is not None:
            clip.note("the self-attention mask is ignored in attention contribution")
        item, slot = target
        mass = generative_key_mass(
            query,
            key,
            item,
            query.shape[2] - tokens,
            clip.query_index,
            self.options.attention_chunk,
            arguments.get("scale"),
        )
        units = mass * (tokens / clip.num_queries)  # 1 = the uniform share of one video token
        clip.ensure_step(slot * clip.attention_every)
        clip.attention[slot, pos].copy_(units[-tokens:])
        if key.shape[2] > tokens:
            clip.attention_text[slot, pos] = units[:-tokens].sum() / tokens
        clip.attention_seen[slot, pos] = True
        clip.heads, clip.keys = query.shape[1], key.shape[2]
        self.attention_observed = True
        self.peak_transient_bytes = max(
            self.peak_transient_bytes, transient_bytes(query.shape[1], self.options.attention_chunk, key.shape[2])
        )

    # -- modulation (non-Wan families) -----------------------------------------------------------------------
    def _on_modulation(self, module, args, output) -> None:
        call, clip = self.call, self.clip
        if call is None or clip is None:
            return
        element = self._modulation[1]
        value = output[element] if element is not None else output
        if not isinstance(value, torch.Tensor):
            return
        for item, branch, step in call.items:
            if branch == "cond" and value.numel() % call.batch == 0:
                clip.modulation[step] = value.reshape(call.batch, -1)[item].detach().float().clone()
