"""Pieces every hetcache command shares: parsers with examples, workload flags, output checks, errors, tables."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, cli_types
from .atomic import replace_refusal
from .contracts import SYNTAX, contract_type
from .errors import HetCacheError, InputError
from .preflight import check_workload
from .workloads.clips import CLIP_KINDS
from .workloads.spec import ClipSource, Workload, load_workload, parse_clip_names

# exit code → meaning; every command lists the ones it uses in its --help
EXIT_OK, EXIT_WRITE_FAILED, EXIT_BAD_INPUT, EXIT_NO_FEASIBLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_WRITE_FAILED: "a file operation failed after the checks (e.g. the disk filled up)",
    EXIT_BAD_INPUT: "bad input: a flag, file or folder (one message names it and the fix; nothing was written)",
    EXIT_NO_FEASIBLE: "no trial met the budget (no policy was written)",
    EXIT_INTERRUPTED: "interrupted (Ctrl+C)",
}


def epilog(examples: Sequence[str], codes: Sequence[int] = (0, 1, 2, 130)) -> str:
    """The --help epilog: usage examples, then the exit codes the command can return."""
    lines = ["examples:", *(f"  {example}" for example in examples), "", "exit codes:"]
    lines += [f"  {code:<3}  {EXIT_CODES[code]}" for code in codes]
    return "\n".join(lines)


def command_parser(
    factory: Callable[..., argparse.ArgumentParser],
    prog: str | None,
    description: str,
    examples: Sequence[str],
    codes: Sequence[int] = (0, 1, 2, 130),
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A parser (top-level, or a subcommand via `sub.add_parser`) with examples, exit codes and --version."""
    if prog is not None:
        kwargs["prog"] = prog
    parser = factory(
        description=description,
        epilog=epilog(examples, codes),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    parser.add_argument("--version", action="version", version=f"hetcache {__version__}")
    return parser


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that select a workload: a file, or the reference workload / a real pipeline with clips."""
    group = parser.add_argument_group("workload (default: the embedded reference workload)")
    group.add_argument("--workload", type=Path, help="workload JSON file (hetcache.workload/v1)")
    group.add_argument(
        "--pipeline",
        help="Wan-VACE or LTX-Video pipeline folder, or a Wan-VACE hub id (default: the embedded reference)",
    )
    group.add_argument("--weights", choices=("trained", "random"), help="reference model weights (default trained)")
    group.add_argument("--video", type=Path, help="input video (mp4 or PNG folder) for a real pipeline")
    group.add_argument("--mask", type=Path, help="edit mask video (white = region to generate)")
    group.add_argument(
        "--prompt-embeds", type=Path, help="safetensors/torch file with prompt_embeds, negative_prompt_embeds"
    )
    group.add_argument(
        "--clips",
        help=f"synthetic clips, comma-separated: kinds from {','.join(CLIP_KINDS)}, or kind-seed (box-7001)",
    )
    group.add_argument("--steps", type=cli_types.integer(2), help="denoising steps (≥ 2)")
    group.add_argument("--guidance-scale", type=cli_types.number(0.0), help="classifier-free guidance scale (≥ 0)")
    group.add_argument(
        "--height", type=cli_types.size, help="frame height, a multiple of 16 (alone: the width keeps the aspect)"
    )
    group.add_argument(
        "--width", type=cli_types.size, help="frame width, a multiple of 16 (alone: the height keeps the aspect)"
    )
    group.add_argument("--frames", type=cli_types.frames, help="number of frames, 4k+1 ≥ 5 (5, 9, 13, 17, …)")
    group.add_argument("--seed", type=cli_types.integer(0), help="generator seed (≥ 0)")
    group.add_argument("--device", help="cpu, cuda, cuda:1, …")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    group.add_argument("--fit", choices=("strict", "crop", "resize"), help="how to reconcile a mask/video mismatch")
    group.add_argument(
        "--mask-threshold", type=cli_types.fraction_open, help="binarise a grey-level mask at this level, in (0, 1)"
    )
    group.add_argument(
        "--contract",
        type=contract_type,
        help=f"editing contract every run follows, uncached and cached: {SYNTAX} (default none: the raw output; "
        "docs/contracts.md)",
    )


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload the flags describe (a file's, with flags overriding its fields)."""
    workload = load_workload(args.workload) if args.workload else Workload()
    changes: dict[str, Any] = {}
    if args.pipeline:
        changes.update(pipeline=args.pipeline, name=Path(args.pipeline).name or args.pipeline)
    if args.video or args.mask:
        if not (args.video and args.mask):
            raise InputError("--video and --mask must be given together.", "pass both files.")
        if args.clips is not None:
            raise InputError(
                f"--video/--mask and --clips {args.clips!r} both name the clips to run.",
                "pass either the video and mask files or synthetic --clips, not both.",
            )
        changes["clips"] = (ClipSource(name=args.video.stem, video=str(args.video), mask=str(args.mask)),)
    if args.clips is not None:  # given but empty ('') is refused by parse_clip_names, not read as "the default"
        changes["clips"] = parse_clip_names(args.clips, workload)
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
        ("contract", "contract"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = str(value) if isinstance(value, Path) else value
    return check_workload(workload.replace(**changes))


def _existing_ancestor(path: Path, flag: str, shown: Path) -> Path:
    """The nearest ancestor of `path` that exists; it must be a folder (else nothing can be created under it)."""
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise InputError(
                    f"{flag} '{shown}' cannot be created: '{ancestor}' is a file, not a folder.",
                    f"choose an {flag} outside it.",
                )
            return ancestor
    return Path(path.anchor)


def _check_writable(folder: Path, flag: str, shown: Path) -> None:
    """Create and remove an empty probe folder in `folder`: the only sure test (read-only mounts, /proc, …)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hetcache-probe-", dir=folder))
    except OSError as exc:
        raise InputError(
            f"{flag} '{shown}' cannot be written: creating anything in '{folder}' fails ({exc.strerror}).",
            f"choose an {flag} in a folder you can write to, e.g. {flag} runs/out.",
        ) from None


def _refuse_link(path: Path, flag: str) -> None:
    """A symbolic link (dangling or not) is never written through or replaced: refused before any compute."""
    link = path.expanduser().absolute()
    if link.is_symlink():
        target = os.readlink(link)
        state = "" if link.exists() else ", which does not exist"
        raise InputError(
            f"{flag} '{path}' is a symbolic link to '{target}'{state}; hetcache never writes through or replaces a "
            "link.",
            f"pass the real location (or another {flag}).",
        )


def check_output_folder(
    path: Path,
    overwrite: bool = False,
    what: str = "output folder",
    flag: str = "--out",
    reuse: bool = False,
    *,
    kind: str,
) -> Path:
    """Check, before any compute, that `path` can become (or, with `reuse`, be written into as) a `kind` folder.

    Refused whatever the flags: the working folder and its parents, a symbolic link, a path under a file, a place
    that cannot be written, a non-empty folder hetcache did not write (no marker), one another kind of command
    wrote, and one holding a file hetcache did not put there (`atomic.replace_refusal`). A folder of the same kind
    is replaced only with `overwrite` (or written into when `reuse`).
    """
    _refuse_link(path, flag)
    resolved = path.expanduser().absolute().resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(
            f"{flag} '{path}' is the working folder or one of its parents; hetcache never writes its output there.",
            f"pass a new sub-folder, e.g. {flag} runs/out.",
        )
    if resolved.exists():
        if not resolved.is_dir():
            raise InputError(f"{flag} '{path}' is a file, not a folder.", f"choose another {flag}.")
        refusal = replace_refusal(resolved, kind)
        if refusal is not None:
            raise InputError(
                f"{flag} '{path}' {refusal}; it is never replaced or written into, even with --overwrite.",
                f"choose a new or empty {flag}, or move that folder (or file) away yourself.",
            )
        if not (overwrite or reuse):
            raise InputError(
                f"{what} '{path}' already exists.", f"pass --overwrite to replace it, or choose another {flag}."
            )
        if reuse:
            _check_writable(resolved, flag, path)
    _check_writable(_existing_ancestor(resolved, flag, path), flag, path)
    return path


def check_output_file(path: Path, flag: str, replace: bool = True) -> Path:
    """Check, before any compute, that the file `path` can be written (atomically, next to where it goes); a file
    that is `replace`d by a rename must not be a symbolic link (the rename would replace the link, not its target)."""
    if replace:
        _refuse_link(path, flag)
    resolved = path.expanduser().absolute().resolve()
    if resolved.is_dir():
        raise InputError(f"{flag} '{path}' is a folder; it must name a file.", f"e.g. {flag} {path / 'policy.json'}.")
    _check_writable(_existing_ancestor(resolved, flag, path), flag, path)
    return path


def run_cli(
    main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = "hetcache"
) -> int:
    """Run a command's main and return its exit code (EXIT_CODES): user errors become one line on stderr."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) and flag errors (2, message already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except HetCacheError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        where = f" on '{exc.filename}'" if exc.filename else ""
        print(f"{prog}: error: a file operation failed{where} ({exc.strerror or exc}).", file=sys.stderr)
        return EXIT_WRITE_FAILED


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
