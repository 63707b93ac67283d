"""Analytic FLOPs of a transformer forward from its family's `ModelShape` and the number of computed tokens.

The block structure it counts is what the engine's families share (Wan, Wan-VACE, LTX-Video): self-attention with
four D×D projections, cross-attention to the prompt, a two-matrix FFN; VACE blocks add in/out projections. The
embeddings and the head: patch (or linear) embedding, time embedder (run once per timestep value: LTX's per-token
timesteps run it per token), text projection, output projection.

Counts matrix products only (2 FLOPs per multiply-add), as `torch.utils.flop_counter.FlopCounterMode` does:
projections, attention scores and values, cross-attention, FFN, VACE in/out projections, embeddings and the head.
Norms, modulation, RoPE, softmax and the forecast's extrapolation of cached residuals are O(N·D) and left out on both
sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .engine.registry import ModelShape

PARTS = ("self_attention", "cross_attention", "ffn", "vace", "embed_head")


@dataclass(frozen=True)
class CostModel:
    """Dimensions a FLOPs estimate needs; build with `CostModel.from_model(transformer)`."""

    dim: int
    ffn_dim: int
    num_layers: int
    num_vace_layers: int
    in_channels: int
    out_channels: int
    patch_volume: int
    text_dim: int
    freq_dim: int
    vace_in_channels: int

    @classmethod
    def from_shape(cls, shape: ModelShape) -> CostModel:
        """The cost model of a family's config-level shape (`Family.shape(config)`)."""
        return cls(
            dim=shape.dim,
            ffn_dim=shape.ffn_dim,
            num_layers=shape.num_layers,
            num_vace_layers=shape.num_vace_layers,
            in_channels=shape.in_channels,
            out_channels=shape.out_channels,
            patch_volume=shape.patch_volume,
            text_dim=shape.text_dim,
            freq_dim=shape.freq_dim,
            vace_in_channels=shape.vace_in_channels,
        )

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> CostModel:
        """The cost model of a built transformer (its family's shape of its config)."""
        from .engine.registry import model_shape

        return cls.from_shape(model_shape(model))

    # -- pieces ---------------------------------------------------------------------------------------------
    def block(self, active: int, keys: int, text_len: int, text_kv: bool = True) -> dict[str, float]:
        """One transformer block with `active` query tokens over `keys` keys; `text_kv`: text K/V recomputed."""
        d, f = self.dim, self.ffn_dim
        return {
            "self_attention": 8.0 * active * d * d + 4.0 * active * keys * d,
            "cross_attention": 4.0 * active * d * d
            + 4.0 * active * text_len * d
            + (4.0 * text_len * d * d if text_kv else 0.0),
            "ffn": 4.0 * active * d * f,
        }

    def vace_block(self, active: int, keys: int, text_len: int, first: bool, text_kv: bool = True) -> float:
        """One VACE block (its own attention, cross-attention, FFN, plus proj_in on the first and proj_out)."""
        proj = 2.0 * active * self.dim * self.dim * (2 if first else 1)
        return sum(self.block(active, keys, text_len, text_kv).values()) + proj

    def skipped_kv(self, skipped: int, first_vace: bool = False) -> float:
        """The skipped-token K/V refresh of one partial block: key and value projections of `skipped` tokens (and the
        first VACE block's `proj_in` of their control states)."""
        d2 = self.dim * self.dim
        return 4.0 * skipped * d2 + (2.0 * skipped * d2 if first_vace else 0.0)

    def embed_head(self, tokens: int, text_len: int, vace: bool, time_rows: int = 1) -> float:
        """Patch embeddings, time and text embedders, output projection (run on every step, REUSE included);
        `time_rows`: timestep values per sample the time embedder runs on (1, or the tokens for per-token ones)."""
        d = self.dim
        patch = 2.0 * tokens * self.in_channels * self.patch_volume * d
        control = 2.0 * tokens * self.vace_in_channels * self.patch_volume * d if vace else 0.0
        time = 2.0 * time_rows * (self.freq_dim * d + d * d + d * 6 * d)
        text = 2.0 * text_len * (self.text_dim * d + d * d)
        head = 2.0 * tokens * d * self.out_channels * self.patch_volume
        return patch + control + time + text + head

    # -- whole forwards -------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: int,
        text_len: int,
        active_blocks: list[int] | None = None,
        active_vace: list[int] | None = None,
        run_blocks: bool = True,
        text_kv: bool = True,
        batch: int = 1,
        refresh_skipped_kv: bool = False,
        time_rows: int = 1,
    ) -> dict[str, float]:
        """FLOPs split by part of one forward; `active_*[i]` = tokens computed in block i (default: all);
        `refresh_skipped_kv`: blocks computing fewer than `tokens` also project the skipped tokens' keys/values."""
        parts = dict.fromkeys(PARTS, 0.0)
        vace = self.num_vace_layers > 0
        parts["embed_head"] = self.embed_head(tokens, text_len, vace, time_rows)
        if run_blocks:
            for i in range(self.num_layers):
                n = tokens if active_blocks is None else active_blocks[i]
                for part, value in self.block(n, tokens, text_len, text_kv).items():
                    parts[part] += value
                if refresh_skipped_kv:
                    parts["self_attention"] += self.skipped_kv(tokens - n)
            for i in range(self.num_vace_layers):
                n = tokens if active_vace is None else active_vace[i]
                parts["vace"] += self.vace_block(n, tokens, text_len, first=i == 0, text_kv=text_kv)
                if refresh_skipped_kv:
                    parts["vace"] += self.skipped_kv(tokens - n, first_vace=i == 0)
        return {k: v * batch for k, v in parts.items()}

    def uncached_forward(self, tokens: int, text_len: int, batch: int = 1, time_rows: int = 1) -> float:
        """Total FLOPs of one plain (unhooked) forward."""
        return sum(self.forward(tokens, text_len, batch=batch, time_rows=time_rows).values())
