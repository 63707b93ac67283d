"""What every benchmark script shares: a workload from flags, the provenance of a result and its atomic JSON write.

    parser = argparse.ArgumentParser()
    harness.workload_flags(parser, steps=12, height=128, width=128, frames=9, clips="box,moving")
    args = parser.parse_args(argv)
    session = LoadedWorkload(harness.workload_from_flags(args))
    ...
    harness.write_result(args.out, record, script="tuner.py", argv=argv, device=args.device)

The workload flags are those of the hetcache commands (`--weights --steps --height --width --frames --clips --seed
--device --dtype --pipeline ...`), checked the same way; a script only changes their defaults.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hetcache import __version__, reference
from hetcache.atomic import write_json
from hetcache.cli_common import add_workload_arguments, workload_from_args
from hetcache.workloads.spec import Workload


def workload_flags(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add the hetcache commands' workload flags to `parser`, with this script's defaults (`steps=12`, ...)."""
    add_workload_arguments(parser)
    parser.set_defaults(**defaults)


def workload_from_flags(args: argparse.Namespace) -> Workload:
    """The workload the flags describe; the reference weights default to trained when shipped, else random."""
    if getattr(args, "weights", None) is None and not getattr(args, "pipeline", None):
        args.weights = "trained" if reference.trained_available() else "random"
    return workload_from_args(args)


def device_name(device: str) -> str:
    """What ran the benchmark: the CUDA device's name, else the CPU's."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that re-runs this benchmark (`python benchmarks/<script> <arguments>`)."""
    return f"python benchmarks/{script} " + shlex.join(list(sys.argv[1:] if argv is None else argv))


def provenance(script: str, argv: Sequence[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Where a result came from: command, hetcache and torch versions, time, device and CPU threads."""
    return {
        "command": command_line(script, argv),
        "tool": f"hetcache {__version__}",
        "torch": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }


def write_result(
    path: str | Path,
    record: dict[str, Any],
    *,
    script: str,
    argv: Sequence[str] | None = None,
    device: str = "cpu",
) -> Path:
    """Write `record` with its provenance as indented JSON, atomically (no half-written results file)."""
    return write_json(path, {**record, "provenance": provenance(script, argv, device)})


def read_result(path: str | Path) -> dict[str, Any] | None:
    """A results file written before (a script that re-runs only some parts keeps the others), or None."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
