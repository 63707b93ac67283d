"""Checks a workload passes before any model is built: the device exists, every input file has its format and
finite values, the run fits the device's memory. Every command runs them (through `cli_common.workload_from_args`)
so that a bad input is one line naming it and the fix, exit 2, before anything is loaded or written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .workloads.spec import ClipSource, Workload

if TYPE_CHECKING:
    from .architectures import Architecture

DEVICES = ("cpu", "cuda", "mps")  # the device types a hetcache run can be placed on
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header of a file
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive (current) or a bare pickle (legacy)
PIXEL_COPIES = 3  # float32 RGB frames a run holds at once at the least: the source clip and two decoded outputs
DECODE_BYTES_PER_PIXEL = 18  # reading a file clip: the video's RGB uint8 (3), the mask's (3) and its float32 copy (12)


def _available(kind: str) -> int:
    """How many devices of type `kind` this torch can use (0: none)."""
    import torch

    if kind == "cpu":
        return 1
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return int(torch.backends.mps.is_available())


def check_device(text: str, origin: str = "--device") -> str:
    """`text` if it names a device this machine has (cpu, cuda, cuda:N, mps); else InputError naming the usable ones."""
    import torch

    usable = ["cpu"] + [f"cuda:{i}" for i in range(_available("cuda"))] + (["mps"] if _available("mps") else [])
    fix = f"use one of {', '.join(usable)}."
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise InputError(f"{origin} {text!r} is not a device name (cpu, cuda, cuda:N, mps).", fix) from None
    if device.type not in DEVICES:
        raise InputError(f"{origin} {text!r}: hetcache runs on {', '.join(DEVICES)}, not {device.type}.", fix)
    count = _available(device.type)
    if count == 0 or (device.index or 0) >= count:
        have = f"{count} {device.type} device{'s' if count != 1 else ''}" if count else f"no {device.type} device"
        raise InputError(f"{origin} {text!r} is not available: this torch sees {have}.", fix)
    return text


def prompt_embeds_format(path: Path) -> str:
    """'safetensors' or 'torch' by the file's first bytes; InputError naming the file when it is neither."""
    fix = "save a dict with 'prompt_embeds' [1, L, D] (and 'negative_prompt_embeds') with safetensors or torch.save."
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise InputError(f"prompt embeddings '{path}' cannot be read ({exc.strerror}).", fix) from None
    if len(head) == 9 and 1 < int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER and head[8:] == b"{":
        return "safetensors"
    if head.startswith(TORCH_MAGICS):
        return "torch"
    raise InputError(f"prompt embeddings '{path}' are neither a safetensors nor a torch file.", fix)


def available_bytes(device: str) -> int:
    """Memory a run on `device` can still take: free device memory on CUDA, the host's available memory else."""
    import torch

    place = torch.device(device)
    if place.type == "cuda":
        return torch.cuda.mem_get_info(place.index or 0)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fit_size(height: int, width: int, have: int, need_at: Callable[[int, int], int]) -> tuple[int, int] | None:
    """The largest size at the aspect of `height` x `width` (multiples of SPATIAL) whose `need_at(h, w)` is at most
    `have`; None when not even SPATIAL x SPATIAL fits. The need is a fixed part plus one that grows with the area:
    solve for the scale, then step down until it fits."""
    from .cli_types import SPATIAL

    def size_at(scale: float) -> tuple[int, int]:
        return (
            max(SPATIAL, int(height * scale) // SPATIAL * SPATIAL),
            max(SPATIAL, int(width * scale) // SPATIAL * SPATIAL),
        )

    fixed = need_at(*size_at(0.0))
    if fixed > have:
        return None
    scale = min(1.0, ((have - fixed) / max(1.0, need_at(height, width) - fixed)) ** 0.5)
    while need_at(*size_at(scale)) > have:
        scale *= 0.95
    return size_at(scale)


def _architecture(workload: Workload) -> Architecture | None:
    """The workload's transformer architecture from its config alone, or None when it is not known before the model
    is loaded (a hub id, or a folder the loader will say what is wrong with)."""
    from .architectures import load_architecture

    if workload.is_reference:
        from .reference import MODEL_DIR

        source = MODEL_DIR
    elif Path(workload.pipeline).is_dir():
        source = Path(workload.pipeline)
    else:
        return None
    try:
        return load_architecture(source)
    except InputError:
        return None


def least_bytes(workload: Workload, arch: Architecture | None, height: int, width: int, frames: int) -> int:
    """At least the memory one run of `workload` at this size takes: the frames themselves and the weights and one
    transformer call's activations (`hetcache.memory.least_device_bytes`, no token mask built, no cache)."""
    from .memory import least_device_bytes

    pixels = PIXEL_COPIES * frames * height * width * 3 * 4
    if arch is None:
        return pixels
    return pixels + least_device_bytes(
        arch, height=height, width=width, num_frames=frames, cfg=workload.guidance_scale > 1.0,
        model_dtype=workload.dtype,
    )  # fmt: skip


def _refuse_size(what: str, need: int, have: int, device: str, fit: tuple[int, int] | None, frames: int) -> None:
    from .memory import GIB

    raise InputError(
        f"{what} needs at least {need / GIB:.1f} GiB on {device} (the frames, and the weights and one step's "
        f"activations by hetcache.memory), but {have / GIB:.1f} GiB are available.",
        f"use at most --height {fit[0]} --width {fit[1]} at --frames {frames}, or fewer --frames."
        if fit
        else "use fewer --frames (not even the smallest frame size fits at this many).",
    )


def _check_file_clip(workload: Workload, source: ClipSource, arch: Architecture | None, have: int) -> None:
    """A file clip: both files' formats and sizes from their headers (a corrupt frame refused by name), the frame
    count against the pipeline's least and --frames, and the memory of decoding it and of the run at its size."""
    from .memory import GIB
    from .video import Constraints, probe_video, target_size, usable_frames

    count, height, width = probe_video(source.video, "video")
    probe_video(source.mask, "mask")
    decode = DECODE_BYTES_PER_PIXEL * count * height * width
    if decode > have:
        raise InputError(
            f"video '{source.video}' ({count} frames of {width}x{height}) takes at least {decode / GIB:.1f} GiB to "
            f"decode with its mask, but {have / GIB:.1f} GiB are available on this host.",
            "pass a shorter or smaller video (hetcache decodes every frame of the file before resizing).",
        )
    constraints = Constraints(height=workload.height, width=workload.width, num_frames=workload.num_frames)
    frames = usable_frames(count, constraints, source.name)
    height, width = target_size(height, width, constraints)
    need = least_bytes(workload, arch, height, width, frames)
    if need > have:
        fit = fit_size(height, width, have, lambda h, w: least_bytes(workload, arch, h, w, frames))
        _refuse_size(
            f"clip '{source.name}' at {width}x{height}, {frames} frames,", need, have, workload.device, fit, frames
        )


def check_memory(workload: Workload) -> None:
    """Refuse a run whose size cannot fit the device's memory, naming the largest size that fits at the same aspect
    and frame count (a lower bound of the need: what passes may still be tight). Synthetic clips by the workload's
    size; file clips by their headers, before any frame is decoded."""
    have = available_bytes(workload.device)
    arch = _architecture(workload)
    if not workload.uses_synthetic_clips():
        for source in workload.clip_sources():
            if source.kind is None:
                _check_file_clip(workload, source, arch, have)
        return
    frames, height, width = workload.synthetic_size()
    need = least_bytes(workload, arch, height, width, frames)
    if need > have:
        fit = fit_size(height, width, have, lambda h, w: least_bytes(workload, arch, h, w, frames))
        _refuse_size(f"--height {height} --width {width} --frames {frames}", need, have, workload.device, fit, frames)


def check_workload(workload: Workload) -> Workload:
    """Every check a workload passes before any model is built (device, input files, memory); returns it
    unchanged."""
    check_device(workload.device)
    if workload.prompt_embeds:
        from .workloads.pipelines import read_prompt_embeds

        read_prompt_embeds(workload.prompt_embeds)  # format, keys and finite values (small: read twice is cheap)
    check_memory(workload)
    return workload
