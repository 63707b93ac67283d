"""What an editing contract adds to a denoising run's wall-clock: latent blending and paste-back, side by side.

    python benchmarks/contracts.py --quick                    # 128² x 9, 10 steps, 3 rounds: a sanity check
    python benchmarks/contracts.py                            # 256² x 17, 20 steps, 7 rounds (quiet machine)
    python benchmarks/contracts.py --device cuda --dtype bfloat16 --pipeline DIR --prompt-embeds FILE

On the reference workload (or any workload the hetcache commands' flags name), each round runs every clip under
every contract (none, blend, paste, blend+paste) in a rotating order, so drifts of the machine fall on all of them
alike. Reported per contract: the median over rounds of the summed denoising-loop seconds and its ratio to `none`
(min–max over rounds), and the paste-back seconds as a share of the denoising loop. Since the whole-run ratios carry
the machine's noise, the blend's own work is also timed directly: the scheduler step with and without the blend
wrapper on the run's latents, many times, medians. One-time costs per clip (the source latents' VAE encode, the VAE
reach probe) are reported apart. Speed only: the quality of each contract is in tests/test_contracts.py and the
crossover benchmarks.

    python benchmarks/contracts.py --trim                     # the discard trim under blend, 256² x 17

With `--trim`, it measures instead what the discard trim (`tokens.trim_discarded`, docs/contracts.md) saves on a FULL
step under blend: per clip, the transformer call of the run's first step (captured from a real blended pipeline call)
is run on two copies of the transformer, all-FULL with and without the trim, interleaved `--reps` times after a
warm-up (median, min–max seconds); FLOPs from the engine's accounting. The same saving is estimated from the FLOPs
formula for the Wan2.1-VACE-1.3B architecture (30 blocks, 512 prompt tokens) at the same token grid and inside share,
and at 480x832x81 with that share.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import torch

from hetcache import apply_hetcache, blend, reference, remove_hetcache
from hetcache.architectures import wan_config
from hetcache.atomic import write_text
from hetcache.cost import CostModel
from hetcache.engine.registry import family_of
from hetcache.errors import InputError
from hetcache.policy import Policy
from hetcache.workloads.execute import LoadedWorkload

CONTRACTS = ("none", "blend", "paste", "blend+paste")
QUICK = dict(height=128, width=128, frames=9, steps=10, reps=3, clips="box-7001")
DEFAULTS = dict(height=256, width=256, frames=17, steps=20, reps=7, clips="box-7001,small_moving-7003")
TARGET = 0.01  # the bound: a contract adds less than 1 % to the denoising loop
STEP_REPEATS = 200
WAN_1_3B_TEXT = 512  # prompt tokens of the released Wan pipelines
WAN_480P = (21, 30, 52)  # token grid of 480x832x81 (latent 21 x 60 x 104, patch 1 x 2 x 2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def describe(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def step_overhead(session: LoadedWorkload, repeats: int = STEP_REPEATS) -> dict[str, Any]:
    """The blend wrapper's own cost per scheduler step: one step of the pipeline's scheduler on latents of the
    clip's size, with and without blending, interleaved `repeats` times (medians, seconds)."""
    clip, device = session.clips[0], session.workload.device
    source, weights = session.blend_inputs(clip)
    source = source.to(device)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(source.shape, generator=gen).to(device)
    velocity = torch.randn(source.shape, generator=gen).to(device)
    scheduler = type(session.pipe.scheduler).from_config(session.pipe.scheduler.config)
    steps = session.workload.steps
    plain, wrapped = [], []
    for _ in range(repeats):
        for kind in ("plain", "wrapped"):
            scheduler.set_timesteps(steps, device=device)
            t = scheduler.timesteps[0]
            step = blend.LatentBlend(scheduler, source, weights).step if kind == "wrapped" else scheduler.step
            _sync(device)
            started = time.perf_counter()
            step(velocity, t, sample, return_dict=False)
            _sync(device)
            (plain if kind == "plain" else wrapped).append(time.perf_counter() - started)
    # the first wrapped step also captures the noise and moves the mask: time a later step too
    scheduler.set_timesteps(steps, device=device)
    blending = blend.LatentBlend(scheduler, source, weights)
    blending.step(velocity, scheduler.timesteps[0], sample, return_dict=False)
    later = []
    for _ in range(repeats):
        blending.calls, scheduler._step_index = 1, 1
        _sync(device)
        started = time.perf_counter()
        blending.step(velocity, scheduler.timesteps[1], sample, return_dict=False)
        _sync(device)
        later.append(time.perf_counter() - started)
    return {
        "plain_step_s": statistics.median(plain),
        "first_blended_step_s": statistics.median(wrapped),
        "later_blended_step_s": statistics.median(later),
    }


def first_call(session: LoadedWorkload, clip) -> dict[str, Any]:
    """The keyword arguments of the transformer's first call in a (blended) pipeline run of `clip` (cond branch)."""
    captured: dict[str, Any] = {}

    def grab(module, args, kwargs):
        if not captured:
            captured.update({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    handle = session.pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        session.generate(clip, decode=False)
    finally:
        handle.remove()
    return captured


def wan_1_3b_saving(grid: tuple[int, int, int], inside_share: float) -> dict[str, float]:
    """The trim's FLOPs saving per FULL step of the Wan2.1-VACE-1.3B architecture, from the FLOPs formula: the
    outside tokens' queries, attention, cross-attention and FFN of the last block less their K/V projections, over a
    FULL forward (`CostModel.uncached_forward`)."""
    config = wan_config(vace_in_channels=96, **reference.WAN21_VACE_1_3B)
    cost = CostModel.from_shape(family_of("WanVACETransformer3DModel").shape(config))
    tokens = math.prod(grid)
    outside = tokens - round(inside_share * tokens)
    saved = sum(cost.block(outside, tokens, WAN_1_3B_TEXT, False).values()) - cost.skipped_kv(outside)
    return {"tokens": tokens, "blocks": cost.num_layers, "saved": saved / cost.uncached_forward(tokens, WAN_1_3B_TEXT)}


def trim_measure(session: LoadedWorkload, reps: int) -> list[dict[str, Any]]:
    """Per clip: engine FLOPs and interleaved wall-clock of one FULL forward with and without the discard trim."""
    device, transformer = session.workload.device, session.pipe.transformer
    rows = []
    for clip in session.clips:
        call, discarded = first_call(session, clip), session.discarded(clip)
        models = {"untrimmed": transformer, "trimmed": copy.deepcopy(transformer)}
        handles = {
            name: apply_hetcache(
                model,
                Policy(name=name).replace(trim_discarded=name == "trimmed"),
                strict=False,
                plan="F" * (reps + 1),
                discarded=discarded,
            )
            for name, model in models.items()
        }
        seconds: dict[str, list[float]] = {name: [] for name in models}
        try:
            for round_ in range(reps + 1):  # the first round warms up
                order = list(models) if round_ % 2 == 0 else list(models)[::-1]
                for name in order:
                    with torch.no_grad(), models[name].cache_context("cond"):
                        _sync(device)
                        started = time.perf_counter()
                        models[name](**call)
                        _sync(device)
                    if round_:
                        seconds[name].append(time.perf_counter() - started)
        finally:
            for model in models.values():
                remove_hetcache(model)
        calls = {name: handle.state.run.calls[-1] for name, handle in handles.items()}
        if not calls["trimmed"].trimmed:
            raise RuntimeError(f"clip {clip.name}: the trimmed forward did not trim (is every token inside the mask?)")
        tokens = calls["trimmed"].tokens
        share = handles["trimmed"].state.run.trim.active.numel() / tokens
        patch = transformer.config.patch_size
        grid = tuple(n // p for n, p in zip(call["hidden_states"].shape[2:], patch, strict=True))
        rows.append(
            {
                "clip": clip.name,
                "tokens": tokens,
                "inside_share": share,
                "flops": {name: c.flops for name, c in calls.items()},
                "flops_uncached": calls["trimmed"].flops_uncached,
                "flops_saved": 1.0 - calls["trimmed"].flops / calls["untrimmed"].flops,
                "seconds": {name: describe(values) for name, values in seconds.items()},
                "time_saved": describe(
                    [1.0 - t / u for t, u in zip(seconds["trimmed"], seconds["untrimmed"], strict=True)]
                ),
                "wan_1_3b": {"same_grid": wan_1_3b_saving(grid, share), "480x832x81": wan_1_3b_saving(WAN_480P, share)},
            }
        )
    return rows


def trim_markdown(report: dict[str, Any]) -> str:
    w = report["workload"]
    lines = [
        f"The discard trim under contract `blend` on the reference workload ({report['weights']} weights; the tiny "
        f"reference model: {report['blocks']} blocks), {w['height']}x{w['width']}x{w['num_frames']}, the first step's "
        f"FULL forward (cond branch); device {report['provenance']['device_name']} ({w['dtype']}, "
        f"{report['provenance']['threads']} threads); {report['reps']} interleaved repeats after a warm-up (median, "
        "min–max). FLOPs: the engine's accounting; Wan2.1-VACE-1.3B (30 blocks, 512 prompt tokens): the FLOPs formula "
        "at the same inside share.",
        "",
        f"Command: `{report['provenance']['command']}`",
        "",
        "| clip | tokens | inside | FLOPs saved / FULL step | FULL forward s, untrimmed | trimmed | wall saved "
        "| 1.3B, same grid | 1.3B, 480x832x81 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["clips"]:
        u, t, saved = row["seconds"]["untrimmed"], row["seconds"]["trimmed"], row["time_saved"]
        big = row["wan_1_3b"]
        lines.append(
            f"| {row['clip']} | {row['tokens']} | {row['inside_share']:.1%} | {row['flops_saved']:.2%} | "
            f"{u['median']:.4f} ({u['min']:.4f}–{u['max']:.4f}) | {t['median']:.4f} ({t['min']:.4f}–{t['max']:.4f}) | "
            f"{saved['median']:.2%} ({saved['min']:.2%} – {saved['max']:.2%}) | {big['same_grid']['saved']:.2%} | "
            f"{big['480x832x81']['saved']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def trim_main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    session = LoadedWorkload(harness.workload_from_flags(args).replace(contract="blend"))
    report = {
        "weights": session.workload.weights if session.workload.is_reference else session.workload.pipeline,
        "blocks": len(session.pipe.transformer.blocks),
        "reps": args.reps,
        "workload": session.workload.to_dict(),
        "clips": trim_measure(session, args.reps),
    }
    out = args.out.with_name(args.out.name + "_trim")
    path = harness.write_result(out.with_suffix(".json"), report, script="contracts.py", argv=argv, device=args.device)
    report = harness.read_result(path)
    write_text(out.with_suffix(".md"), trim_markdown(report))
    print(trim_markdown(report))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (a sanity check)")
    parser.add_argument("--trim", action="store_true", help="what the discard trim saves on a FULL step under blend")
    harness.workload_flags(parser, device="cpu")
    parser.add_argument("--reps", type=int, help="interleaved rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/contracts"), help="output stem")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.reps < 1:
        raise InputError(f"--reps {args.reps} must be at least 1.", "e.g. --reps 7.")
    if args.contract not in (None, "none"):
        raise InputError("--contract: this benchmark runs every contract itself.", "drop --contract.")
    return args


def markdown(report: dict[str, Any]) -> str:
    w = report["workload"]
    lines = [
        f"Editing-contract overhead on the reference workload ({report['weights']} weights), {w['height']}x"
        f"{w['width']}x{w['num_frames']}, {w['steps']} steps, clips {', '.join(c['name'] for c in w['clips'])}; "
        f"device {report['provenance']['device_name']} ({w['dtype']}, {report['provenance']['threads']} threads); "
        f"{report['reps']} interleaved rounds (median, min–max of the per-round ratio to `none`).",
        "",
        f"Command: `{report['provenance']['command']}`",
        "",
        "| contract | denoising loop (s) | vs none | paste-back (s) | paste-back / loop |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["contracts"].items():
        ratio = row["vs_none"]
        lines.append(
            f"| {name} | {row['denoise_s']['median']:.3f} | {ratio['median']:+.2%} ({ratio['min']:+.2%} – "
            f"{ratio['max']:+.2%}) | {row['paste_s']['median']:.4f} | {row['paste_share']:.3%} |"
        )
    step = report["step"]
    lines += [
        "",
        f"The blend's own work per step (scheduler step with the wrapper minus without, medians of {STEP_REPEATS}): "
        f"{1e3 * (step['later_blended_step_s'] - step['plain_step_s']):.3f} ms "
        f"({step['later_share_of_step']:.3%} of a denoising step of {1e3 * report['seconds_per_step']:.1f} ms); "
        "the first step, which also takes the run's noise, "
        f"{1e3 * (step['first_blended_step_s'] - step['plain_step_s']):.3f} ms. One-time per clip: source latents "
        f"{report['setup']['source_latents_s']:.3f} s, VAE reach probe {report['setup']['reach_probe_s']:.3f} s "
        "(once per VAE).",
        "",
        f"Target: < {TARGET:.0%} of the denoising loop — blend {report['verdict']['blend']}, paste-back "
        f"{report['verdict']['paste']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trim:
        return trim_main(args, argv)
    base = harness.workload_from_flags(args)
    sessions = {"none": LoadedWorkload(base)}
    pipe = sessions["none"].pipe
    for name in CONTRACTS[1:]:
        sessions[name] = LoadedWorkload(base.replace(contract=name), pipe=pipe)
    started = time.perf_counter()
    blend.vae_reach(pipe)
    reach_s = time.perf_counter() - started
    started = time.perf_counter()
    for clip in sessions["blend"].clips:
        sessions["blend"].blend_inputs(clip)
    source_s = (time.perf_counter() - started) / len(sessions["blend"].clips)
    for name in CONTRACTS[2:]:  # the same clips: share the source latents
        sessions[name]._blend_inputs = sessions["blend"]._blend_inputs
    for session in sessions.values():  # warm-up
        session.generate(session.clips[0])
    seconds: dict[str, list[float]] = {name: [] for name in CONTRACTS}
    pastes: dict[str, list[float]] = {name: [] for name in CONTRACTS}
    for round_ in range(args.reps):
        order = CONTRACTS[round_ % len(CONTRACTS) :] + CONTRACTS[: round_ % len(CONTRACTS)]
        for name in order:
            session = sessions[name]
            generations = [session.generate(clip) for clip in session.clips]
            seconds[name].append(sum(g.denoise_seconds for g in generations))
            pastes[name].append(sum(g.paste_seconds for g in generations))
        print(f"round {round_ + 1}/{args.reps}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in CONTRACTS))
    rows = {}
    for name in CONTRACTS:
        ratios = [s / n - 1.0 for s, n in zip(seconds[name], seconds["none"], strict=True)]
        rows[name] = {
            "denoise_s": describe(seconds[name]),
            "vs_none": describe(ratios),
            "paste_s": describe(pastes[name]),
            "paste_share": statistics.median(pastes[name]) / statistics.median(seconds[name]),
        }
    step = step_overhead(sessions["blend"])
    per_step = statistics.median(seconds["none"]) / (args.steps * len(sessions["none"].clips))
    step["later_share_of_step"] = (step["later_blended_step_s"] - step["plain_step_s"]) / per_step
    blend_cost = max(step["later_share_of_step"], 0.0)
    paste_cost = rows["paste"]["paste_share"]
    report = {
        "weights": base.weights if base.is_reference else base.pipeline,
        "reps": args.reps,
        "workload": base.to_dict(),
        "contracts": rows,
        "step": step,
        "seconds_per_step": per_step,
        "setup": {"source_latents_s": source_s, "reach_probe_s": reach_s},
        "verdict": {
            "blend": f"{blend_cost:.3%} per step ({'met' if blend_cost < TARGET else 'missed'})",
            "paste": f"{paste_cost:.3%} ({'met' if paste_cost < TARGET else 'missed'})",
        },
    }
    path = harness.write_result(
        args.out.with_suffix(".json"), report, script="contracts.py", argv=argv, device=args.device
    )
    report = harness.read_result(path)
    write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    from hetcache.cli_common import run_cli

    sys.exit(run_cli(main, prog="contracts"))
