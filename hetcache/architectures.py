"""Shipped transformer architectures of released checkpoints (Wan, LTX-Video), by name (configs only, no weights).

Used wherever hetcache needs a real-size model without its weights: the memory plan, the real-architecture CPU
checks and the GPU script (random weights). The constructor arguments are those diffusers' conversions write; this
module is the one place that spells them out (tests, benchmarks and the reference model take theirs from here).
What the pipeline around a transformer implies (VAE strides, prompt length) is its family's (`engine.registry`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .engine.registry import Family, ModelShape, family_of, known_classes
from .errors import InputError
from .tokens import VaeStrides

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


def wan_config(**sizes: Any) -> dict[str, Any]:
    """Constructor arguments of a Wan transformer of these sizes (every other argument as released)."""
    return {**WAN_COMMON, **sizes}


VACE_CLASS = "WanVACETransformer3DModel"
WAN_CLASS = "WanTransformer3DModel"
LTX_CLASS = "LTXVideoTransformer3DModel"
# LTX-Video 0.9.x (2B): the constructor arguments of Lightricks' diffusers conversion.
LTX_2B: dict[str, Any] = dict(
    in_channels=128,
    out_channels=128,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=32,
    attention_head_dim=64,
    cross_attention_dim=2048,
    num_layers=28,
    activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=4096,
    attention_bias=True,
    attention_out_bias=True,
)


def ltx_config(**sizes: Any) -> dict[str, Any]:
    """Constructor arguments of an LTX-Video transformer of these sizes (every other argument as released)."""
    config = {**LTX_2B, **sizes}
    if "cross_attention_dim" not in sizes:  # the prompt is projected to the model width
        config["cross_attention_dim"] = config["num_attention_heads"] * config["attention_head_dim"]
    if "out_channels" not in sizes:  # it predicts the latents it is given
        config["out_channels"] = config["in_channels"]
    return config


@dataclass(frozen=True)
class Architecture:
    """A transformer architecture: diffusers class, constructor config, and what the pipeline around it implies."""

    name: str
    class_name: str
    config: dict[str, Any]
    experts: int = 1  # transformers per pipeline (Wan2.2 A14B: `transformer` and `transformer_2`)
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> Family:
        """The family adapter of its class (a clear error for classes no adapter knows)."""
        return family_of(self.class_name)

    @property
    def shape(self) -> ModelShape:
        return self.family.shape(self.config)

    @property
    def vae(self) -> VaeStrides:
        """The compression of the VAE its pipelines use."""
        return self.family.vae(self.config)

    @property
    def text_len(self) -> int:
        """Prompt tokens of its released pipelines."""
        return self.family.text_len

    @property
    def dim(self) -> int:
        return self.shape.dim

    @property
    def is_vace(self) -> bool:
        return self.shape.num_vace_layers > 0

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
            source="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            notes=("Wan2.2 VAE: 16x spatial compression, 48 latent channels",),
        ),
        Architecture(
            name="ltx-video-2b",
            class_name=LTX_CLASS,
            config=LTX_2B,
            source="Lightricks/LTX-Video (0.9.x, diffusers format)",
            notes=("VAE 8x temporal, 32x32 spatial; patch 1: one token per 32x32 pixels over 8 frames",),
        ),
    )
}


def names() -> list[str]:
    """Names of the shipped architectures."""
    return list(ARCHITECTURES)


def size_overrides(name: str) -> dict[str, Any]:
    """The size fields of a shipped Wan architecture (heads, widths, layers, VACE layers, text width, RoPE length)."""
    config = ARCHITECTURES[name].config
    keys = (*WAN_1_3B_SIZE, "vace_layers", "text_dim", "rope_max_seq_len")
    return {k: config[k] for k in keys if k in config}


def architecture_of(model: torch.nn.Module) -> Architecture:
    """The Architecture of a built transformer (its own config; one expert)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    name = type(model).__name__
    return Architecture(name=f"{name} (module)", class_name=name, config=config)


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
    engine_classes = known_classes(engine_only=True)
    if class_name not in engine_classes:
        raise InputError(
            f"model config '{path}' is for {class_name or 'an unnamed class'}, which no hetcache engine family runs.",
            f"pass the config.json of one of {', '.join(engine_classes)}.",
        )
    config = {k: v for k, v in data.items() if not k.startswith("_")}
    try:
        family_of(class_name).shape(config)
    except KeyError as exc:
        raise InputError(f"model config '{path}' lacks {exc.args[0]}.", "pass a complete config.json.") from None
    name = path.parent.name or str(path)
    return Architecture(name=name, class_name=class_name, config=config)
