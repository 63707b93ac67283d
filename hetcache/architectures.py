"""Shipped transformer architectures of the released Wan checkpoints, by name (configs only, no weights).

Used wherever hetcache needs a real-size model without its weights: the memory plan, the real-architecture CPU
checks and the GPU script (random weights). The constructor arguments are those diffusers' Wan conversion writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

# Constructor arguments every released Wan transformer shares.
WAN_COMMON: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# The size of each architecture (what differs between them); the speed benchmarks use these as overrides.
WAN_1_3B_SIZE: dict[str, Any] = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
WAN_14B_SIZE: dict[str, Any] = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
WAN_5B_SIZE: dict[str, Any] = dict(num_attention_heads=24, attention_head_dim=128, ffn_dim=14336, num_layers=30)
VACE_1_3B: dict[str, Any] = dict(vace_layers=list(range(0, 30, 2)), vace_in_channels=96)
VACE_14B: dict[str, Any] = dict(vace_layers=list(range(0, 40, 5)), vace_in_channels=96)

VACE_CLASS = "WanVACETransformer3DModel"
WAN_CLASS = "WanTransformer3DModel"
TEXT_LEN = 512  # umT5-XXL prompt tokens of the released pipelines


@dataclass(frozen=True)
class Architecture:
    """A transformer architecture: diffusers class, constructor config, and what the pipeline around it implies."""

    name: str
    class_name: str
    config: dict[str, Any]
    experts: int = 1  # transformers per pipeline (Wan2.2 A14B: `transformer` and `transformer_2`)
    vae_spatial: int = 8  # pixels per latent cell
    vae_temporal: int = 4  # pixel frames per latent frame (after the first)
    text_len: int = TEXT_LEN
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dim(self) -> int:
        return self.config["num_attention_heads"] * self.config["attention_head_dim"]

    @property
    def is_vace(self) -> bool:
        return self.class_name == VACE_CLASS

    def parameters(self) -> int:
        """Parameter count of one transformer (built on the meta device: nothing is allocated)."""
        with torch.device("meta"):
            model = self.build()
        return sum(p.numel() for p in model.parameters())

    def build(self, **overrides: Any) -> torch.nn.Module:
        """The diffusers transformer with this config (and `overrides`, e.g. `num_layers=2`), random weights."""
        import diffusers

        return getattr(diffusers, self.class_name)(**{**self.config, **overrides}).eval()


def _arch(name: str, class_name: str, *parts: dict[str, Any], **kwargs: Any) -> Architecture:
    config: dict[str, Any] = {}
    for part in (WAN_COMMON, *parts):
        config.update(part)
    return Architecture(name=name, class_name=class_name, config=config, **kwargs)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        _arch("wan2.1-vace-1.3b", VACE_CLASS, WAN_1_3B_SIZE, VACE_1_3B, source="Wan-AI/Wan2.1-VACE-1.3B-diffusers"),
        _arch("wan2.1-vace-14b", VACE_CLASS, WAN_14B_SIZE, VACE_14B, source="Wan-AI/Wan2.1-VACE-14B-diffusers"),
        _arch(
            "wan2.2-vace-fun-a14b",
            VACE_CLASS,
            WAN_14B_SIZE,
            VACE_14B,
            experts=2,
            source="alibaba-pai/Wan2.2-VACE-Fun-A14B",
            notes=("two experts; each keeps its own caches for the run",),
        ),
        _arch(
            "wan2.2-t2v-a14b",
            WAN_CLASS,
            WAN_14B_SIZE,
            experts=2,
            source="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            notes=("two experts; each keeps its own caches for the run",),
        ),
        _arch(
            "wan2.2-ti2v-5b",
            WAN_CLASS,
            WAN_5B_SIZE,
            dict(in_channels=48, out_channels=48),
            vae_spatial=16,
            source="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            notes=("Wan2.2 VAE: 16x spatial compression, 48 latent channels",),
        ),
    )
}


def names() -> list[str]:
    """Names of the shipped architectures."""
    return list(ARCHITECTURES)


def size_overrides(name: str) -> dict[str, Any]:
    """The size fields of a shipped architecture (heads, widths, layers, VACE layers, text width, RoPE length)."""
    config = ARCHITECTURES[name].config
    keys = (*WAN_1_3B_SIZE, "vace_layers", "text_dim", "rope_max_seq_len")
    return {k: config[k] for k in keys if k in config}


def _vae_spatial(config: dict[str, Any]) -> int:
    """Pixels per latent cell: 16 for the Wan2.2 VAE (48 latent channels), else 8."""
    return 16 if config.get("in_channels") == 48 else 8


def architecture_of(model: torch.nn.Module) -> Architecture:
    """The Architecture of a built transformer (its own config; one expert)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    name = type(model).__name__
    return Architecture(name=f"{name} (module)", class_name=name, config=config, vae_spatial=_vae_spatial(config))


def load_architecture(source: str | os.PathLike) -> Architecture:
    """A shipped architecture by name, or one read from a diffusers transformer `config.json` (file or folder)."""
    text = os.fspath(source)
    if text in ARCHITECTURES:
        return ARCHITECTURES[text]
    path = Path(text)
    if path.is_dir():
        path = path / "config.json" if (path / "config.json").is_file() else path / "transformer" / "config.json"
    if not path.is_file():
        raise InputError(
            f"model '{text}' is neither a shipped architecture nor a config.json.",
            f"pass one of {', '.join(ARCHITECTURES)}, or a diffusers transformer config.json (or its folder).",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"model config '{path}' cannot be read as JSON ({exc}).", "pass a valid config.json.") from exc
    class_name = data.get("_class_name")
    if class_name not in (VACE_CLASS, WAN_CLASS):
        raise InputError(
            f"model config '{path}' is for {class_name or 'an unnamed class'}, not a Wan transformer.",
            f"pass the config.json of a {VACE_CLASS} or {WAN_CLASS}.",
        )
    config = {k: v for k, v in data.items() if not k.startswith("_")}
    missing = [k for k in ("num_attention_heads", "attention_head_dim", "num_layers", "patch_size") if k not in config]
    if missing:
        raise InputError(f"model config '{path}' lacks {', '.join(missing)}.", "pass a complete config.json.")
    name = path.parent.name or str(path)
    return Architecture(name=name, class_name=class_name, config=config, vae_spatial=_vae_spatial(config))
