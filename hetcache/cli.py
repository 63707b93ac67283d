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
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from . import cli_types, memory_cli, timing
from .cli_common import (
    add_workload_arguments,
    check_output_folder,
    command_parser,
    format_table,
    progress_enabled,
    run_cli,
    workload_from_args,
)
from .contracts import Contract, contract_note, parse_contract
from .errors import InputError

RUN_EXAMPLES = (
    "hetcache run --policy reference-psnr35 --compare --clips box,moving --out runs/apply",
    "hetcache run --policy runs/tune/policy.json --compare --reps 5 --out runs/apply --overwrite",
    "hetcache run --pipeline DIR --video in.mp4 --mask mask.mp4 --prompt-embeds embeds.safetensors \\",
    "    --frames 33 --policy wan21-vace-1.3b-paper --compare --out runs/mine",
)
POLICIES_EXAMPLES = (
    "hetcache policies list",
    "hetcache policies show reference-psnr35",
    "hetcache policies validate runs/tune/policy.json",
)


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `hetcache run` / `hetcache-run`."""
    add_workload_arguments(parser)
    parser.add_argument("--policy", help="policy file or shipped policy name (see `hetcache policies list`)")
    parser.add_argument("--compare", action="store_true", help="also run uncached; report speedup and quality")
    parser.add_argument(
        "--reps",
        type=cli_types.integer(1, 100),
        help="interleaved uncached/cached timing rounds after the warm-up, for the wall-clock speedup's median and "
        f"min–max (default {timing.DEFAULT_REPS})",
    )
    parser.add_argument("--no-strict", action="store_true", help="apply a policy tuned for another architecture")
    parser.add_argument("--lpips-weights", type=Path, help="folder with AlexNet + LPIPS head weights (optional)")
    parser.add_argument("--out", type=Path, default=Path("runs/run"), help="output folder (default runs/run)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder hetcache wrote before")
    return parser


def _speedup_text(row: dict) -> str:
    """'1.31 (1.28–1.35)': the median time speedup with its min–max over rounds."""
    return f"{row['speedup_time']:.2f} ({row['speedup_time_min']:.2f}–{row['speedup_time_max']:.2f})"


def quality_columns(q: dict, contract: Contract) -> dict:
    """A run table's quality columns, led by the contract's headline (in the mask and across its edge once the
    source is pasted or blended back; whole frame first for the raw output)."""
    if contract.keeps_source:
        return {
            "mask": q["psnr_mask"],
            "seam": q["psnr_seam"],
            "SSIM mask": q["ssim_mask"],
            "margin": q["psnr_margin"],
            "PSNR (frame)": q["psnr"],
        }
    return {
        "PSNR": q["psnr"],
        "mask": q["psnr_mask"],
        "margin": q["psnr_margin"],
        "bg": q["psnr_background"],
        "SSIM": q["ssim"],
        "SSIM mask": q["ssim_mask"],
    }


def _print_run(record: dict) -> None:
    contract = parse_contract(record["summary"].get("contract"))
    rows = []
    for clip in record["clips"]:
        row = {"clip": clip["clip"]}
        if "uncached_denoise_s" in clip:
            row["uncached s"] = clip["uncached_denoise_s"]
        if "cached_denoise_s" in clip:
            row["cached s"] = clip["cached_denoise_s"]
            row["plan"] = clip["stats"]["decisions"]
            trimmed = clip["stats"].get("trimmed_steps")
            if trimmed:  # FULL steps whose last block ran on the tokens inside the contract's latent mask only
                row["last block trimmed"] = f"{len(trimmed)} of {len(row['plan'])} steps"
            row["FLOPs x"] = clip["speedup_flops"] if "speedup_flops" in clip else 1 / clip["stats"]["flops_fraction"]
        if "speedup_time" in clip:
            row["time x (min–max)"] = _speedup_text(clip)
        if "quality" in clip:
            row.update(quality_columns(clip["quality"], contract))
        rows.append(row)
    print(format_table(rows, list(dict.fromkeys(key for row in rows for key in row))))
    summary = record["summary"]
    if "speedup_time" in summary:
        q = summary["quality"]
        lpips = q["lpips"] if isinstance(q["lpips"], str) else format(q["lpips"], ".4f")
        rounds = summary["timing"]["rounds"]
        time_text = (
            f"denoising wall-clock {summary['speedup_time']:.2f}x (median of {rounds} interleaved rounds, "
            f"min–max {summary['speedup_time_min']:.2f}–{summary['speedup_time_max']:.2f}x"
            + (", not trustworthy: see the warnings)" if summary["warnings"] else ")")
        )
        if contract.keeps_source:
            quality = (
                f"mean PSNR in the mask {q['psnr_mask']:.2f} dB, across its edge {q['psnr_seam']:.2f} dB "
                f"(whole frame {q['psnr']:.2f} dB), SSIM in the mask {q['ssim_mask']:.4f}"
            )
        else:
            quality = f"mean PSNR {q['psnr']:.2f} dB (mask {q['psnr_mask']:.2f} dB), SSIM {q['ssim']:.4f}"
        print(f"\nspeedup: {summary['speedup_flops']:.2f}x FLOPs, {time_text}; {quality}; LPIPS {lpips}")
        for warning in summary["warnings"]:
            print(f"warning: {warning}")
    note = contract_note(contract)
    if note and any("quality" in clip for clip in record["clips"]):
        print(f"contract: {note}")
    for clip in record["clips"]:
        for note in clip.get("notes", [])[1:] + clip.get("stats", {}).get("notes", []):
            print(f"note [{clip['clip']}]: {note}")


def _check_run_flags(args: argparse.Namespace) -> None:
    """Flags that mean something only together: --compare needs a --policy, --reps needs --compare."""
    if args.compare and args.policy is None:
        raise InputError(
            "--compare compares a policy's run with the uncached run, but no --policy was given.",
            "add --policy NAME_OR_FILE (see `hetcache policies list`), or drop --compare.",
        )
    if args.reps is not None and not args.compare:
        raise InputError(
            f"--reps {args.reps} sets the timing rounds of --compare, which was not given.",
            "add --compare, or drop --reps.",
        )


def command_run(args: argparse.Namespace) -> int:
    from .lpips import load_lpips
    from .policy import check_plan_steps, load_policy
    from .runner import run

    _check_run_flags(args)
    workload = workload_from_args(args)
    policy = load_policy(args.policy) if args.policy is not None else None
    if policy is not None and policy.step_plan.rule == "explicit" and policy.step_plan.plan is not None:
        check_plan_steps(policy.step_plan.plan, workload.steps, f"policy '{args.policy}': step_plan.plan")
    out = check_output_folder(args.out, args.overwrite, kind="run")
    lpips = load_lpips(args.lpips_weights) if args.lpips_weights else None
    compare = args.compare or policy is None
    reps = timing.DEFAULT_REPS if args.reps is None else args.reps
    runs = len(workload.clip_sources()) * ((1 + reps) * 2 if compare and policy else 1)
    with tqdm(total=runs, desc="runs started", unit="run", disable=not progress_enabled(), file=sys.stderr) as bar:

        def before_run(clip: str, kind: str, round_: int) -> None:
            bar.set_postfix_str(f"{clip} {kind} {'warm-up' if round_ == 0 else f'round {round_}'}")
            bar.update(1)

        record = run(
            workload,
            policy=policy,
            compare=compare,
            out=out,
            strict=not args.no_strict,
            overwrite=args.overwrite,
            lpips=lpips,
            reps=reps,
            before_run=before_run,
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
    if not args.target:
        raise InputError(f"`hetcache policies {args.action}` needs a policy name or file.", "add it after the action.")
    policy = load_policy(args.target)
    if args.action == "show":
        print(json.dumps(policy.to_dict(), indent=2))
    else:
        print(f"{args.target}: valid {policy.to_dict()['schema']} policy '{policy.name}'")
    return 0


def _policies_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("action", choices=("list", "show", "validate"))
    parser.add_argument("target", nargs="?", help="policy name or file (show / validate)")
    return parser


# Subcommands: name → (help, examples, add its arguments, run it). Another subcommand is one more entry.
SUBCOMMANDS: dict[str, tuple[str, Sequence[str], Callable, Callable[[argparse.Namespace], int]]] = {
    "run": (
        "run a workload, optionally with a policy and the uncached comparison",
        RUN_EXAMPLES,
        add_run_arguments,
        command_run,
    ),
    "policies": ("list, show or validate policies", POLICIES_EXAMPLES, _policies_parser, command_policies),
    "plan-memory": (memory_cli.HELP, memory_cli.EXAMPLES, memory_cli.add_arguments, memory_cli.command),
}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        argparse.ArgumentParser,
        "hetcache",
        __doc__.split("\n\n")[0],
        [*RUN_EXAMPLES[:1], *POLICIES_EXAMPLES[:1], "hetcache reference-train --out runs/reference-model"],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, examples, add_arguments, _) in SUBCOMMANDS.items():
        description = text[0].upper() + text[1:] + "."
        add_arguments(command_parser(sub.add_parser, None, description, examples, name=name, help=text))
    # listed for --help only: _main hands `reference-train` and every flag after it to the training script's parser
    sub.add_parser("reference-train", help="train the reference model (see `hetcache reference-train --help`)")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reference-train"]:  # its own parser takes every flag after the word (argparse REMAINDER cannot)
        from .reference import train

        return train.main(argv[1:])
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command][3](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, "hetcache")


def _run_main(argv: Sequence[str] | None) -> int:
    parser = command_parser(
        argparse.ArgumentParser, "hetcache-run", "Run a workload (the same as `hetcache run`).", RUN_EXAMPLES
    )
    return command_run(add_run_arguments(parser).parse_args(argv))


def run_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run_main, argv, "hetcache-run")


if __name__ == "__main__":
    raise SystemExit(main())
