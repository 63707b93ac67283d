"""Pieces every hetcache command shares: workload flags, output folders, error reporting, tables."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import HetCacheError, InputError
from .workloads.clips import MASK_KINDS
from .workloads.spec import ClipSource, Workload, load_workload


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that select a workload: a file, or the reference workload / a real pipeline with clips."""
    group = parser.add_argument_group("workload (default: the embedded reference workload)")
    group.add_argument("--workload", type=Path, help="workload JSON file (hetcache.workload/v1)")
    group.add_argument("--pipeline", help="WanVACEPipeline folder or hub id (default: the embedded reference)")
    group.add_argument("--weights", choices=("trained", "random"), help="reference model weights (default trained)")
    group.add_argument("--video", type=Path, help="input video (mp4 or PNG folder) for a real pipeline")
    group.add_argument("--mask", type=Path, help="edit mask video (white = region to generate)")
    group.add_argument(
        "--prompt-embeds", type=Path, help="safetensors/torch file with prompt_embeds, negative_prompt_embeds"
    )
    group.add_argument("--clips", help=f"reference clips to use, comma-separated from {','.join(MASK_KINDS)}")
    group.add_argument("--steps", type=int, help="denoising steps")
    group.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    group.add_argument("--height", type=int)
    group.add_argument("--width", type=int)
    group.add_argument("--frames", type=int, help="number of frames (4k+1)")
    group.add_argument("--seed", type=int)
    group.add_argument("--device", help="cpu, cuda, cuda:1, …")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    group.add_argument("--fit", choices=("strict", "crop", "resize"), help="how to reconcile a mask/video mismatch")
    group.add_argument("--mask-threshold", type=float, help="binarise a grey-level mask at this level")


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload the flags describe (a file's, with flags overriding its fields)."""
    workload = load_workload(args.workload) if args.workload else Workload()
    changes: dict[str, Any] = {}
    if args.pipeline:
        changes.update(pipeline=args.pipeline, name=Path(args.pipeline).name or args.pipeline)
    if args.video or args.mask:
        if not (args.video and args.mask):
            raise InputError("--video and --mask must be given together.", "pass both files.")
        changes["clips"] = (ClipSource(name=args.video.stem, video=str(args.video), mask=str(args.mask)),)
    if args.clips:
        kinds = [k.strip() for k in args.clips.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in MASK_KINDS]
        if unknown:
            raise InputError(f"--clips names unknown kinds {', '.join(unknown)}.", f"use {', '.join(MASK_KINDS)}.")
        sources = {s.kind: s for s in workload.clip_sources() if s.kind}
        changes["clips"] = tuple(sources.get(k, ClipSource(name=k, kind=k)) for k in kinds)
    for flag, field in (
        ("weights", "weights"),
        ("prompt_embeds", "prompt_embeds"),
        ("steps", "steps"),
        ("guidance_scale", "guidance_scale"),
        ("height", "height"),
        ("width", "width"),
        ("frames", "num_frames"),
        ("seed", "seed"),
        ("device", "device"),
        ("dtype", "dtype"),
        ("fit", "fit"),
        ("mask_threshold", "mask_threshold"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = str(value) if isinstance(value, Path) else value
    if changes.get("steps") is not None and changes["steps"] < 2:
        raise InputError(f"--steps {changes['steps']} is too few.", "use at least 2 denoising steps.")
    return workload.replace(**changes)


def prepare_output(path: Path, overwrite: bool, what: str = "output folder") -> Path:
    """Refuse an existing output folder unless `overwrite` (the write itself is atomic)."""
    if path.exists() and not overwrite:
        raise InputError(f"{what} '{path}' already exists.", "pass --overwrite, or choose another --out.")
    return path


def run_cli(
    main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = "hetcache"
) -> int:
    """Run a command's main; user errors become one line on stderr and exit code 2."""
    try:
        return main(argv)
    except HetCacheError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written.", file=sys.stderr)
        return 130


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width text table."""
    if not rows:
        return "(nothing)"
    columns = columns or list(rows[0])
    cells = [[format_value(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])


def progress_enabled() -> bool:
    """Progress bars on an interactive terminal only (not in CI logs)."""
    return sys.stderr.isatty() and not os.environ.get("CI")
