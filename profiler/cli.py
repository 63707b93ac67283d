"""`hetcache-profile`: profile a workload's pipeline and write a profile folder."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from hetcache import cli_types
from hetcache.cli_common import (
    add_workload_arguments,
    check_output_folder,
    command_parser,
    progress_enabled,
    run_cli,
    workload_from_args,
)
from hetcache.workloads.execute import LoadedWorkload

from .families import transformer_of
from .generic import generic_runs, is_generic
from .options import ProfileOptions
from .run import profile_runs, session_runs
from .summary import summary_text

EXAMPLES = (
    "hetcache-profile --clips box,moving --out runs/profile                      # the embedded reference workload",
    "hetcache-profile --pipeline DIR --video in.mp4 --mask mask.mp4 --prompt-embeds embeds.safetensors --out runs/p",
    "hetcache-profile --pipeline COGVIDEOX_DIR --prompt-embeds embeds.safetensors --steps 50 --out runs/p",
    "hetcache-profile --layers 0,2,vace.1 --attention-every 0 --out runs/profile --overwrite",
)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        argparse.ArgumentParser,
        "hetcache-profile",
        "Record where a diffusers video transformer is redundant: drift per layer, token and step, attention "
        "contribution, the step-change curve with a fitted rescaling polynomial, cost and headroom.",
        EXAMPLES,
    )
    add_workload_arguments(parser)
    defaults = ProfileOptions()
    group = parser.add_argument_group("profiling")
    group.add_argument("--out", type=Path, default=Path("runs/profile"), help="output folder (default runs/profile)")
    group.add_argument("--overwrite", action="store_true", help="replace a profile folder hetcache wrote before")
    group.add_argument(
        "--num-clips",
        type=cli_types.integer(1),
        default=2,
        help="profile the first N clips unless --clips names them (≥ 1, default 2)",
    )
    group.add_argument("--layers", help="blocks to record, e.g. 0,2,5 or vace.1 (default: all)")
    group.add_argument(
        "--attention-every",
        type=cli_types.integer(0),
        default=defaults.attention_every,
        help=f"record attention contribution every K-th step; 0 = off (default {defaults.attention_every})",
    )
    group.add_argument(
        "--attention-chunk",
        type=cli_types.integer(1),
        default=defaults.attention_chunk,
        help=f"queries per chunk; extra memory ≈ 3·heads·chunk·tokens floats (default {defaults.attention_chunk})",
    )
    group.add_argument(
        "--degree",
        type=cli_types.integer(1, 10),
        default=defaults.degree,
        help=f"degree of the rescaling polynomial, 1–10 (default {defaults.degree})",
    )
    group.add_argument(
        "--margin-width",
        type=cli_types.integer(0),
        default=defaults.margin_width,
        help=f"margin width in tokens, ≥ 0 (default {defaults.margin_width})",
    )
    group.add_argument(
        "--max-tokens",
        type=cli_types.integer(16),
        default=defaults.max_tokens,
        help=f"pool stored per-token arrays above this size, ≥ 16 (default {defaults.max_tokens})",
    )
    group.add_argument(
        "--small-change",
        type=cli_types.number(0.0, low_open=True),
        default=defaults.small_change,
        help="output change below which a step counts as reusable in the verdict",
    )
    group.add_argument("--no-residual", action="store_true", help="skip the drift of block residuals")
    return parser


def _options(args: argparse.Namespace) -> dict:
    return dict(
        layers=args.layers,
        attention_every=args.attention_every,
        attention_chunk=args.attention_chunk,
        degree=args.degree,
        margin_width=args.margin_width,
        max_tokens=args.max_tokens,
        small_change=args.small_change,
        residual=not args.no_residual,
    )


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    workload = workload_from_args(args)
    out = check_output_folder(args.out, args.overwrite, "profile folder", kind="profile")
    options = ProfileOptions.from_kwargs(_options(args))
    if is_generic(workload):
        pipe, runs = generic_runs(workload)
    else:
        session = LoadedWorkload(workload)
        pipe = session.pipe
        names = None if args.clips or workload.clips else [c.name for c in session.clips[: args.num_clips]]
        runs = session_runs(session, names)
    result = profile_runs(transformer_of(pipe), runs, options, workload.to_dict(), progress=progress_enabled())
    result.save(out, overwrite=args.overwrite)
    print(summary_text(result.data))
    print(f"\nwrote {out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, "hetcache-profile")


if __name__ == "__main__":
    raise SystemExit(main())
