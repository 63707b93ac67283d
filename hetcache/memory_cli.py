"""`hetcache plan-memory`: the bytes every hetcache cache takes for a model, clip size, CFG and policy.

hetcache plan-memory --model wan2.1-vace-14b --height 720 --width 1280 --frames 81 --cache-dtype float8_e4m3fn --offload
hetcache plan-memory --model path/to/transformer/config.json --policy my-policy.json --json
hetcache plan-memory --grid    # the fit table: shipped VACE models x 480p/720p x 33/81 frames x dtype x offload
"""

from __future__ import annotations

import argparse
import itertools
import json

from .errors import InputError

GRID_MODELS = ("wan2.1-vace-1.3b", "wan2.1-vace-14b")
GRID_SIZES = ((480, 832), (720, 1280))
GRID_FRAMES = (33, 81)
GRID_CACHE = (("bfloat16", False), ("bfloat16", True), ("float8_e4m3fn", False), ("float8_e4m3fn", True))


def parse_blocks(text: str | None, flag: str) -> tuple[int, ...] | None:
    """Block indices from "0-19", "0,2,4", "none" (no block) or None (the policy's)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    out: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            out.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not a block list.", 'use e.g. "0-19", "0,5,10" or "none".') from None
    return tuple(out)


HELP = "bytes of every hetcache cache for a model, size, CFG and policy, and whether it fits a GPU"
EXAMPLES = (
    "hetcache plan-memory --model wan2.1-vace-14b --height 720 --width 1280 --frames 81 \\",
    "    --cache-dtype float8_e4m3fn --offload",
    "hetcache plan-memory --model path/to/transformer/config.json --policy my-policy.json --json",
    "hetcache plan-memory --grid",
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `plan-memory` (no torch import: `hetcache --help` stays fast; the plan validates dtypes)."""
    from . import cli_types

    parser.add_argument("--model", default="wan2.1-vace-1.3b", help="architecture name or config.json (default 1.3B)")
    parser.add_argument("--policy", help="policy file or shipped name (default: every block cached)")
    parser.add_argument("--height", type=cli_types.size, default=480)
    parser.add_argument("--width", type=cli_types.size, default=832)
    parser.add_argument("--frames", type=cli_types.frames, default=81, help="pixel frames (4k+1, default 81)")
    parser.add_argument("--batch", type=cli_types.integer(1), default=1, help="clips per call")
    parser.add_argument("--no-cfg", action="store_true", help="one cache context (guidance scale 1)")
    parser.add_argument(
        "--mask-fraction", type=cli_types.number(0.0, 1.0), default=0.25, help="share of each frame in the edit mask"
    )
    parser.add_argument("--model-dtype", default="bfloat16", help="weights and activations (default bfloat16)")
    parser.add_argument("--cache-dtype", help="auto, bfloat16, float8_e4m3fn, … (default: the policy's)")
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction, help="default: the policy's")
    parser.add_argument("--partial-blocks", help='main blocks with caches: "0-19", "none" (default: the policy\'s)')
    parser.add_argument("--partial-vace-blocks", help="VACE blocks with caches (default: the policy's)")
    parser.add_argument("--text-len", type=cli_types.integer(1), help="prompt tokens (default 512)")
    parser.add_argument("--gpu-gib", type=cli_types.number(0.0, low_open=True), default=80.0, help="GPU GiB (80)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--per-block", action="store_true", help="also list the bytes of every layer")
    parser.add_argument("--grid", action="store_true", help="print the fit table of the shipped VACE models")
    return parser


def _plan(args: argparse.Namespace, **overrides):
    from .memory import plan_memory

    options = dict(
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        policy=args.policy,
        cfg=not args.no_cfg,
        batch=args.batch,
        mask=args.mask_fraction,
        model_dtype=args.model_dtype,
        cache_dtype=args.cache_dtype,
        offload=args.offload,
        partial_blocks=parse_blocks(args.partial_blocks, "--partial-blocks"),
        partial_vace_blocks=parse_blocks(args.partial_vace_blocks, "--partial-vace-blocks"),
        text_len=args.text_len,
    )
    options.update(overrides)
    return plan_memory(options.pop("model", args.model), **options)


def grid_rows(args: argparse.Namespace) -> list[dict]:
    """One row per model, size, frames, CFG (two cache contexts) or not, and cache setting."""
    from .memory import GIB

    rows = []
    for model in GRID_MODELS:
        for height, width in GRID_SIZES:
            for frames in GRID_FRAMES:
                for cfg, (dtype, offload) in itertools.product((True, False), GRID_CACHE):
                    plan = _plan(
                        args, model=model, height=height, width=width, num_frames=frames, cache_dtype=dtype,
                        offload=offload, cfg=cfg,
                    )  # fmt: skip
                    rows.append(
                        {
                            "model": model,
                            "size": f"{height}x{width}x{frames}",
                            "tokens": plan.tokens.total,
                            "CFG": "yes" if cfg else "no",
                            "cache": dtype.replace("float8_e4m3fn", "fp8").replace("bfloat16", "bf16"),
                            "offload": "yes" if offload else "no",
                            "device GiB": plan.device_bytes / GIB,
                            "host GiB": plan.host_bytes / GIB,
                            "weights GiB": plan.weights_bytes / GIB,
                            "total GiB": plan.device_total() / GIB,
                            f"fits {args.gpu_gib:g}": "yes" if plan.fits(args.gpu_gib) else "no",
                        }
                    )
    return rows


def pivot(rows: list[dict], gpu_gib: float) -> list[dict]:
    """One row per model, size and CFG; one column per cache setting: GPU GiB (weights included) and whether it fits."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["size"], r["CFG"])
        row = out.setdefault(key, {"model": r["model"], "size": r["size"], "tokens": r["tokens"], "CFG": r["CFG"]})
        mark = "fits" if r[f"fits {gpu_gib:g}"] == "yes" else "no"
        row[f"{r['cache']}{' + offload' if r['offload'] == 'yes' else ''}"] = f"{r['total GiB']:.1f} {mark}"
        if r["offload"] == "yes":
            row[f"{r['cache']} host"] = f"{r['host GiB']:.1f}"
    return list(out.values())


def markdown(rows: list[dict]) -> str:
    """A markdown table of `rows` (floats to one decimal)."""
    columns = list(rows[0])
    cell = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def check_size(args: argparse.Namespace) -> None:
    """Refuse, before any token mask is built, a size no plan of which fits --gpu-gib (the weights and one step's
    activations alone exceed it) or whose plan this host cannot compute, naming the largest size that fits."""
    from .architectures import load_architecture
    from .memory import GIB, PLAN_BYTES_PER_TOKEN, batch_tokens, least_device_bytes
    from .preflight import available_bytes, fit_size

    arch = load_architecture(args.model)
    size = dict(num_frames=args.frames, cfg=not args.no_cfg, batch=args.batch)
    gpu, host = int(args.gpu_gib * GIB), available_bytes("cpu")

    def gpu_need(h: int, w: int) -> int:
        return least_device_bytes(arch, height=h, width=w, model_dtype=args.model_dtype, **size)

    def host_need(h: int, w: int) -> int:
        return PLAN_BYTES_PER_TOKEN * batch_tokens(arch, height=h, width=w, **size)

    limits = (
        (gpu_need, gpu, f"on the GPU before any cache (the weights and one step's activations), over --gpu-gib "
         f"{args.gpu_gib:g}"),
        (host_need, host, f"of host memory to compute its plan (its token masks), but {host / GIB:.1f} GiB are free"),
    )  # fmt: skip
    for need_at, have, what in limits:
        need = need_at(args.height, args.width)
        if need <= have:
            continue
        fits = [fit_size(args.height, args.width, limit, rule) for rule, limit, _ in limits]
        fit = None if None in fits else min(fits)
        raise InputError(
            f"--height {args.height} --width {args.width} --frames {args.frames} needs at least {need / GIB:.1f} GiB "
            f"{what}.",
            f"use at most --height {fit[0]} --width {fit[1]} at --frames {args.frames}, or fewer --frames."
            if fit
            else "use fewer --frames (not even the smallest frame size fits at this many).",
        )


def command(args: argparse.Namespace) -> int:
    from .cli_common import format_table
    from .memory import GIB

    if args.grid:
        rows = grid_rows(args)
        print(json.dumps(rows, indent=2) if args.json else markdown(pivot(rows, args.gpu_gib)))
        return 0
    check_size(args)
    plan = _plan(args)
    if args.json:
        print(json.dumps(plan.summary(), indent=2))
        return 0
    t = plan.tokens
    print(
        f"{plan.architecture}: {plan.height}x{plan.width}x{plan.num_frames} -> {t.total:,} tokens "
        f"({t.generative:,} generative, {t.skippable:,} skippable, {t.active:,} computed on PARTIAL steps); "
        f"{len(plan.contexts)} cache context(s) x {plan.experts} transformer(s), {len(plan.partial_blocks)} main and "
        f"{len(plan.partial_vace_blocks)} VACE blocks cached, cache {str(plan.cache_dtype).removeprefix('torch.')}, "
        f"offload {'on' if plan.offload else 'off'}"
    )
    device, host = plan.by_kind("device"), plan.by_kind("host")
    rows = [
        {"buffer": kind, "device GiB": device.get(kind, 0) / GIB, "host GiB": host.get(kind, 0) / GIB}
        for kind in dict.fromkeys([*device, *host])
    ]
    print(format_table(rows))
    if args.per_block:
        per = plan.by_owner(plan.contexts[0])
        print(format_table([{"layer": k, f"GiB ({plan.contexts[0]})": v / GIB} for k, v in per.items()]))
    print(
        f"\nhetcache device {plan.device_bytes / GIB:.2f} GiB, host {plan.host_bytes / GIB:.2f} GiB; weights "
        f"{plan.weights_bytes / GIB:.2f} GiB; activations ~{plan.activation_bytes / GIB:.2f} GiB (estimate) -> "
        f"{plan.device_total() / GIB:.2f} GiB on the GPU: "
        f"{'fits' if plan.fits(args.gpu_gib) else 'does not fit'} in {args.gpu_gib:g} GiB"
    )
    if plan.offload:
        print(f"offload moves {plan.offload_transfer_bytes() / GIB:.1f} GiB host<->device per PARTIAL step")
    return 0
