"""Checks a workload passes before any model is built: the device exists, every input file has its format and
finite values, the run fits the device's memory. Every command runs them (through `cli_common.workload_from_args`)
so that a bad input is one line naming it and the fix, exit 2, before anything is loaded or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .workloads.spec import Workload

DEVICES = ("cpu", "cuda", "mps")  # the device types a hetcache run can be placed on
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header of a file
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive (current) or a bare pickle (legacy)
PIXEL_COPIES = 3  # float32 RGB frames a run holds at once at the least: the source clip and two decoded outputs


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


def least_bytes(workload: Workload, height: int, width: int, frames: int, have: int) -> int | None:
    """At least the memory one run of `workload` at this size takes: the frames themselves and, unless they alone
    exceed `have` (the model's plan is then not worth its token masks), the weights and one transformer call's
    activations (`hetcache.memory`, no cache); None when the model is not known before it is loaded (a hub id)."""
    from .architectures import load_architecture
    from .memory import plan_memory

    pixels = PIXEL_COPIES * frames * height * width * 3 * 4
    if pixels > have:
        return pixels
    if workload.is_reference:
        from .reference import MODEL_DIR

        source = MODEL_DIR
    elif Path(workload.pipeline).is_dir():
        source = Path(workload.pipeline)
    else:
        return None
    try:
        arch = load_architecture(source)
    except InputError:
        return None  # not a transformer this estimate reads: the pipeline loader says what is wrong
    plan = plan_memory(
        arch,
        height=height,
        width=width,
        num_frames=frames,
        cfg=workload.guidance_scale > 1.0,
        model_dtype=workload.dtype,
    )
    return plan.weights_bytes + plan.activation_bytes + pixels


def check_memory(workload: Workload) -> None:
    """Refuse a synthetic-clip run whose size cannot fit the device's memory, naming the largest size that fits at
    the same aspect and frame count (a lower bound of the need: what passes may still be tight)."""
    if not workload.uses_synthetic_clips():
        return  # file clips: their size is known once read, and the fit flags reconcile it
    frames, height, width = workload.synthetic_size()
    have = available_bytes(workload.device)
    need = least_bytes(workload, height, width, frames, have)
    if need is None or need <= have:
        return
    from .cli_types import SPATIAL
    from .memory import GIB

    def size_at(scale: float) -> tuple[int, int]:
        return max(SPATIAL, int(height * scale) // SPATIAL * SPATIAL), max(
            SPATIAL, int(width * scale) // SPATIAL * SPATIAL
        )

    def need_at(scale: float) -> int:
        return least_bytes(workload, *size_at(scale), frames, have) or 0

    # the need is the weights plus a part that grows with the frame's area: solve for the scale, then step down
    fixed = need_at(0.0)
    probe = min(1.0, (have / need) ** 0.5)
    scale = ((have - fixed) / max(1.0, (need_at(probe) - fixed) / probe**2)) ** 0.5 if have > fixed else 0.0
    while scale > 0 and need_at(scale) > have:
        scale *= 0.95
    fit_h, fit_w = size_at(scale)
    raise InputError(
        f"--height {height} --width {width} --frames {frames} needs at least {need / GIB:.1f} GiB on "
        f"{workload.device} (the frames, and the weights and one step's activations by hetcache.memory), but "
        f"{have / GIB:.1f} GiB are available.",
        f"use at most --height {fit_h} --width {fit_w} at --frames {frames}, or fewer --frames.",
    )


def check_workload(workload: Workload) -> Workload:
    """Every check a workload passes before any model is built (device, input files, memory); returns it
    unchanged."""
    check_device(workload.device)
    if workload.prompt_embeds:
        from .workloads.pipelines import read_prompt_embeds

        read_prompt_embeds(workload.prompt_embeds)  # format, keys and finite values (small: read twice is cheap)
    check_memory(workload)
    return workload
