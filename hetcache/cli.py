"""`hetcache` command line: run a workload (with a policy and comparison), inspect policies, train the reference.

hetcache run --policy reference-psnr30 --compare --out runs/apply
hetcache policies list | show NAME | validate FILE
hetcache plan-memory --model wan2.1-vace-14b --height 720 --width 1280 --frames 81
hetcache reference-train --out runs/reference-model
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, memory_cli
from .cli_common import (
    add_workload_arguments,
    format_table,
    prepare_output,
    progress_enabled,
    run_cli,
    workload_from_args,
)


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_workload_arguments(parser)
    parser.add_argument("--policy", help="policy file or shipped policy name (see `hetcache policies list`)")
    parser.add_argument("--compare", action="store_true", help="also run uncached; report speedup and quality")
    parser.add_argument("--no-strict", action="store_true", help="apply a policy tuned for another architecture")
    parser.add_argument("--lpips-weights", type=Path, help="folder with AlexNet + LPIPS head weights (optional)")
    parser.add_argument("--out", type=Path, default=Path("runs/run"), help="output folder (default runs/run)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def _print_run(record: dict) -> None:
    rows = []
    for clip in record["clips"]:
        row = {"clip": clip["clip"]}
        if "uncached_denoise_s" in clip:
            row["uncached s"] = clip["uncached_denoise_s"]
        if "cached_denoise_s" in clip:
            row["cached s"] = clip["cached_denoise_s"]
            row["plan"] = clip["stats"]["decisions"]
            row["FLOPs frac"] = clip["stats"]["flops_fraction"]
        if "quality" in clip:
            q = clip["quality"]
            row.update(
                {
                    "PSNR": q["psnr"],
                    "mask": q["psnr_mask"],
                    "margin": q["psnr_margin"],
                    "bg": q["psnr_background"],
                    "SSIM": q["ssim"],
                    "SSIM mask": q["ssim_mask"],
                }
            )
        rows.append(row)
    print(format_table(rows))
    summary = record["summary"]
    if "speedup_time" in summary:
        q = summary["quality"]
        print(
            f"\nspeedup: {summary['speedup_flops']:.2f}x FLOPs, {summary['speedup_time']:.2f}x denoising wall-clock; "
            f"mean PSNR {q['psnr']:.2f} dB (mask {q['psnr_mask']:.2f} dB), SSIM {q['ssim']:.4f}; "
            f"LPIPS {q['lpips'] if isinstance(q['lpips'], str) else format(q['lpips'], '.4f')}"
        )
    for clip in record["clips"]:
        for note in clip.get("notes", [])[1:] + clip.get("stats", {}).get("notes", []):
            print(f"note [{clip['clip']}]: {note}")


def command_run(args: argparse.Namespace) -> int:
    from .lpips import load_lpips
    from .runner import run

    workload = workload_from_args(args)
    out = prepare_output(args.out, args.overwrite)
    lpips = load_lpips(args.lpips_weights) if args.lpips_weights else None
    record = run(
        workload,
        policy=args.policy,
        compare=args.compare or args.policy is None,
        out=out,
        strict=not args.no_strict,
        overwrite=args.overwrite,
        progress=progress_enabled(),
        lpips=lpips,
    )
    _print_run(record)
    print(f"\nwrote {out}/")
    return 0


def command_policies(args: argparse.Namespace) -> int:
    from . import policies
    from .policy import load_policy

    if args.action == "list":
        print(format_table(policies.index()))
        return 0
    policy = load_policy(args.target)
    if args.action == "show":
        print(json.dumps(policy.to_dict(), indent=2))
    else:
        print(f"{args.target}: valid {policy.to_dict()['schema']} policy '{policy.name}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hetcache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"hetcache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub.add_parser("run", help="run a workload, optionally with a policy and the uncached comparison"))
    pol = sub.add_parser("policies", help="list, show or validate policies")
    pol.add_argument("action", choices=("list", "show", "validate"))
    pol.add_argument("target", nargs="?", help="policy name or file (show / validate)")
    memory_cli.add_parser(sub)
    # listed for --help only: _main hands `reference-train` and every flag after it to the training script's parser
    sub.add_parser("reference-train", help="train the reference model (see `hetcache reference-train --help`)")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reference-train"]:  # its own parser takes every flag after the word (argparse REMAINDER cannot)
        from .reference import train

        return train.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return command_run(args)
    if args.command == "plan-memory":
        return memory_cli.command(args)
    if args.action != "list" and not args.target:
        from .errors import InputError

        raise InputError(f"`hetcache policies {args.action}` needs a policy name or file.", "add it after the action.")
    return command_policies(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, "hetcache")


def _run_main(argv: Sequence[str] | None) -> int:
    parser = _run_parser(
        argparse.ArgumentParser(prog="hetcache-run", description="Run a workload (see `hetcache run`).")
    )
    return command_run(parser.parse_args(argv))


def run_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run_main, argv, "hetcache-run")


if __name__ == "__main__":
    raise SystemExit(main())
