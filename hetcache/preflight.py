"""Checks a workload passes before any model is built: the device exists, every input file has its format and
finite values. Every command runs them (through `cli_common.workload_from_args`) so that a bad input is one line
naming it and the fix, exit 2, before anything is loaded or written.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .workloads.spec import Workload

DEVICES = ("cpu", "cuda", "mps")  # the device types a hetcache run can be placed on
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header of a file
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive (current) or a bare pickle (legacy)


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


def check_workload(workload: Workload) -> Workload:
    """Every check a workload passes before any model is built (device, input files); returns it unchanged."""
    check_device(workload.device)
    if workload.prompt_embeds:
        from .workloads.pipelines import read_prompt_embeds

        read_prompt_embeds(workload.prompt_embeds)  # format, keys and finite values (small: read twice is cheap)
    return workload
