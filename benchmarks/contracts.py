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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import torch

from hetcache import blend
from hetcache.atomic import write_text
from hetcache.errors import InputError
from hetcache.workloads.execute import LoadedWorkload

CONTRACTS = ("none", "blend", "paste", "blend+paste")
QUICK = dict(height=128, width=128, frames=9, steps=10, reps=3, clips="box-7001")
DEFAULTS = dict(height=256, width=256, frames=17, steps=20, reps=7, clips="box-7001,small_moving-7003")
TARGET = 0.01  # the bound: a contract adds less than 1 % to the denoising loop
STEP_REPEATS = 200


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (a sanity check)")
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
