"""The discard trim: on FULL steps whose output outside the contract's latent mask is thrown away, the last block
computes only the tokens inside it (`tokens.trim_discarded`).

Latent blending replaces the latents outside the conservative latent edit mask after every step (and with them the
velocity there); paste-back pastes the source over every pixel the final latents outside a (decoder-reach) mask
decode to. In the last main block the tokens entirely outside that mask feed nothing but the discarded velocity (the
head is per token), so on such a step the block computes the keys/values of every token (its input is exact on a FULL
step) and queries, attention, cross-attention and FFN of the inside tokens only; the outside rows keep the block
input. Exact: what the contract keeps is what the full block gives, up to float rounding of the smaller products.

A FULL step's last block also leaves by-products for later steps: the selection capture and the partial-block
caches. PARTIAL steps read them, so a step is trimmed only if the last block leaves none or no PARTIAL step follows
in the run (REUSE steps read only the whole-stack residual, whose outside rows the contract discards too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..steps import PARTIAL
from .config import EngineConfig
from .state import Rows, RunState


@dataclass(frozen=True)
class Discarded:
    """What the editing contract throws away of the transformer's output, given to `apply_hetcache(discarded=)`.

    weights: latent edit weights [1, 1, T', H', W'] in the VAE's latent grid (hetcache.blend.edit_mask; not packed):
        the output at every cell of weight 0 is discarded.
    every_step: after every step (latent blending), or after the final step only (paste-back).
    """

    weights: torch.Tensor
    every_step: bool


def inside_tokens(config: EngineConfig, discarded: Discarded, grid: tuple[int, int, int]) -> torch.Tensor:
    """[N] bool, the transformer's token order: a token is inside when any of its latent cells has weight > 0."""
    weights = discarded.weights
    if weights.ndim != 5 or weights.shape[:2] != (1, 1):
        raise InputError(
            f"discarded= holds latent edit weights of shape {tuple(weights.shape)}, not [1, 1, T', H', W'].",
            "pass hetcache.blend.edit_mask(...) of the clip, unpacked.",
        )
    patch = config.patch_size
    cells = tuple(g * p for g, p in zip(grid, patch, strict=True))
    if tuple(weights.shape[2:]) != cells:
        raise InputError(
            f"discarded= covers latent grid {tuple(weights.shape[2:])} but this call's latents are {cells}.",
            "pass the edit weights of the clip being generated, at the size the pipeline generates.",
        )
    inside = F.max_pool3d((weights > 0).float(), patch, stride=patch)
    return inside.flatten().bool()


def trim_rows(config: EngineConfig, grid: tuple[int, int, int], device: torch.device) -> Rows | None:
    """The rows a trimmed last block computes (inside) and only projects to keys/values (outside), once per run;
    None when the policy does not trim, nothing is discarded, or no token is outside."""
    if not config.trim_discarded:
        return None
    inside = inside_tokens(config, config.discarded, grid).to(device)
    if bool(inside.all()):
        return None
    active, skipped = inside.nonzero().squeeze(1), (~inside).nonzero().squeeze(1)
    empty = active[:0]
    return Rows(
        active=active,
        n_refresh=0,
        refresh_slots=empty,
        skippable=empty,
        skipped=skipped,
        active_stored=active,
        slots_stored=empty,
    )


def last_block_leaves_state(config: EngineConfig) -> bool:
    """Whether the last block's FULL step writes what PARTIAL steps read (its partial caches, the selection capture)."""
    return config.main_layer_uses_body(config.num_layers - 1)


def trims(config: EngineConfig, run: RunState, step: int | None) -> bool:
    """Whether this FULL step of the run trims its last block (see the module docstring)."""
    if run.trim is None or step is None:
        return False
    final = run.expected_steps is not None and step == run.expected_steps - 1
    if not (config.discarded.every_step or final):
        return False
    if final or not last_block_leaves_state(config):
        return True
    return run.plan is not None and PARTIAL not in run.plan[step + 1 :]
