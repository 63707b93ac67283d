"""LPIPS (AlexNet variant) from weights the user supplies; nothing is downloaded and nothing random is used.

Needs two files in one folder: the ImageNet AlexNet weights in torchvision's layout (`alexnet-owt-*.pth`, keys
`features.N.*`) and LPIPS v0.1's linear heads for AlexNet (`alex.pth`, keys `linK.model.1.weight`). Without them,
quality reports say "unavailable".
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import InputError

# LPIPS input normalisation and AlexNet taps (after relu1..relu5).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_TAPS = (1, 4, 7, 9, 11)
_CHANNELS = (64, 192, 384, 256, 256)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk with torchvision's module indices (so its state dict loads)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


class LPIPS(nn.Module):
    """Learned perceptual distance; lower is closer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] → distance per image [N]."""
        a = ((reference * 2 - 1) - self.shift) / self.scale
        b = ((test * 2 - 1) - self.shift) / self.scale
        total = torch.zeros(a.shape[0], device=a.device)
        for index, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if index in _TAPS:
                head = self.heads[_TAPS.index(index)]
                na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += head((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total

    def video_distance(self, reference: torch.Tensor, test: torch.Tensor) -> float:
        """Mean LPIPS over frames of two videos [F, 3, H, W] in [0, 1]."""
        return float(
            torch.cat([self(r.unsqueeze(0), t.unsqueeze(0)) for r, t in zip(reference, test, strict=True)]).mean()
        )


def load_lpips(folder: str | Path) -> LPIPS:
    """LPIPS with the user's AlexNet and head weights from `folder` (see module docstring)."""
    folder = Path(folder)
    backbones = sorted(folder.glob("alexnet*.pth")) if folder.is_dir() else []
    heads = folder / "alex.pth"
    if not backbones or not heads.is_file():
        raise InputError(
            f"LPIPS weights not found in '{folder}' (need alexnet-owt-*.pth and alex.pth).",
            "copy torchvision's AlexNet checkpoint and LPIPS v0.1 alex.pth there, "
            "or leave LPIPS out (reported unavailable).",
        )
    model = LPIPS()
    try:
        trunk = torch.load(backbones[0], map_location="cpu", weights_only=True)
        model.features.load_state_dict(
            {k[len("features.") :]: v for k, v in trunk.items() if k.startswith("features.")}
        )
        head_state = torch.load(heads, map_location="cpu", weights_only=True)
        for i, head in enumerate(model.heads):
            head.weight.data.copy_(head_state[f"lin{i}.model.1.weight"])
    except (RuntimeError, KeyError, OSError) as exc:
        raise InputError(
            f"LPIPS weights in '{folder}' do not fit AlexNet-LPIPS ({exc}).", "use the original files."
        ) from exc
    return model.eval()
