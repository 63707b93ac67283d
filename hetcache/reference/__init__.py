"""The embedded reference model: a tiny Wan2.1-VACE-architecture pipeline that runs on CPU in seconds.

Its transformer is trained in-repo (`python -m hetcache.reference.train`) and shipped in `model/` as a diffusers
`save_pretrained` folder (fp16 transformer, fp32 random-init VAE made local, with latent statistics calibrated on the
synthetic clips, scheduler, and the fixed prompt embeddings it was trained with). Random weights stay available
for exactness tests, where no behaviour needs to be learnt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..architectures import size_overrides, wan_config
from ..errors import InputError
from ..tokens import VaeStrides

MODEL_DIR = Path(__file__).parent / "model"
CARD_FILE = "reference.json"

# The reference transformer: a Wan-VACE of its own (small) size, every other constructor argument the released one's.
TRANSFORMER_CONFIG = wan_config(
    num_attention_heads=4,
    attention_head_dim=32,
    text_dim=32,
    ffn_dim=512,
    num_layers=6,
    rope_max_seq_len=64,
    vace_layers=[0, 3],
    vace_in_channels=96,
)
# Overrides that turn TRANSFORMER_CONFIG into the Wan2.1-VACE-1.3B architecture (speed benchmarks, random weights).
WAN21_VACE_1_3B = size_overrides("wan2.1-vace-1.3b")
VAE_CONFIG = dict(
    base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)
# Its compression: 2x in space per down-sampling stage, 2x in time where `temperal_downsample` says (Wan's 4 x 8 x 8).
VAE_STRIDES = VaeStrides(
    temporal=2 ** sum(VAE_CONFIG["temperal_downsample"]), spatial=2 ** len(VAE_CONFIG["temperal_downsample"])
)
# How far a grey hole reaches into the reference VAE's latents: (latent frames, latent cells). Cells beyond it encode
# only unmasked pixels (tests/test_reference_training.py checks every mask kind).
VAE_REACH = (1, 2)
SCHEDULER_SHIFT = 3.0
TEXT_LEN = 16


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` except the modules diffusers keeps in float32 when loading with `torch_dtype`."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)
    return model


def random_transformer(seed: int = 0, **overrides):
    """A WanVACETransformer3DModel with the reference architecture and seeded random weights."""
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(seed)
    return WanVACETransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides}).eval()


def random_vae(seed: int = 0, latents_mean: list[float] | None = None, latents_std: list[float] | None = None):
    """The reference AutoencoderKLWan: seeded random weights made local (`localise_vae`), given latent statistics."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    extra = {}
    if latents_mean is not None:
        extra = {"latents_mean": list(latents_mean), "latents_std": list(latents_std)}
    return localise_vae(AutoencoderKLWan(**VAE_CONFIG, **extra)).eval()


@torch.no_grad()
def localise_vae(vae):
    """Make a random-init Wan VAE encode local pixel content, as a trained one does, without training it.

    At random init the residual and attention branches and the biases swamp the input: painting a hole grey moves
    its latents by 0.1–3 % of their variance, so the masked clip's latents still show the hole. With every residual
    and attention branch zeroed (blocks become the identity) and no biases, each latent cell is a fixed random
    function of the pixels around it: the grey hole moves its latents by about their variance, and latents more than
    two cells from a static hole do not move at all (tests/test_reference_training.py).
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResidualBlock

    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            module.conv2.weight.zero_()
        elif isinstance(module, WanAttentionBlock):
            module.proj.weight.zero_()
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d) and module.bias is not None:
            module.bias.zero_()
    return vae


def random_prompt_embeds(seed: int = 1234, text_dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed prompt and negative-prompt embeddings [1, TEXT_LEN, text_dim] in place of a text encoder."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, TEXT_LEN, text_dim, generator=gen), torch.randn(1, TEXT_LEN, text_dim, generator=gen)


def scheduler():
    """The reference flow-matching Euler scheduler (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)


def trained_available() -> bool:
    """Whether the trained reference model is shipped in this installation."""
    return (MODEL_DIR / CARD_FILE).is_file()


def file_checksum(path: Path) -> str:
    """sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_card(folder: Path = MODEL_DIR) -> dict:
    """The training record shipped beside the weights (seed, steps, data recipe, loss, checksums)."""
    return json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))


def verify(folder: Path = MODEL_DIR) -> dict:
    """Check the shipped weights' checksums and config keys against the installed diffusers; return the card."""
    from diffusers import WanVACETransformer3DModel

    if not (folder / CARD_FILE).is_file():
        raise InputError(
            f"the trained reference model is missing from '{folder}'.",
            "reinstall hetcache, or train it with `python -m hetcache.reference.train`.",
        )
    card = model_card(folder)
    for rel, expected in card["checksums"].items():
        actual = file_checksum(folder / rel)
        if actual != expected:
            raise InputError(
                f"reference model file '{rel}' has checksum {actual[:12]}…, expected {expected[:12]}….",
                "reinstall hetcache; the shipped weights were modified or truncated.",
            )
    config = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    accepted = set(WanVACETransformer3DModel._get_init_keys(WanVACETransformer3DModel))
    unknown = sorted(k for k in config if not k.startswith("_") and k not in accepted)
    if unknown:
        raise InputError(
            f"the reference model's config has keys the installed diffusers does not accept: {', '.join(unknown)}.",
            f"install the diffusers version it was trained with ({card.get('diffusers', 'see reference.json')}).",
        )
    return card


def load_prompt_embeds(folder: Path = MODEL_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt embeddings the trained reference model was trained with."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "prompt_embeds.safetensors"))
    return tensors["prompt_embeds"], tensors["negative_prompt_embeds"]
