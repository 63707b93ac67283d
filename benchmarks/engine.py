"""Engine benchmark: PARTIAL forward speedup vs its FLOPs ratio, whole-run speedup, overhead, cache memory, compile.

    python benchmarks/engine.py                      # CPU: 5,070 tokens, width 512 + reference workload run
    python benchmarks/engine.py --device cuda --size full   # Wan2.1-VACE-1.3B architecture, 480x832x33, bf16
    python benchmarks/engine.py --skip-forward --skip-run --compiled small   # eager vs torch.compile only

Runs are interleaved and medians reported (shared machines are noisy). Random weights: speed only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import harness
import torch
from benchmark_base import BENCHMARK_BASE

from hetcache import apply_hetcache, reference
from hetcache.architectures import wan_config
from hetcache.cost import CostModel
from hetcache.policy import Policy

SIZES = {
    # name: transformer config overrides, latent (T, H, W), text tokens
    "small": (
        dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=4, vace_layers=[0, 2], text_dim=64),
        (9, 32, 32),
        64,
    ),
    "cpu": (
        dict(
            num_attention_heads=4, attention_head_dim=128, ffn_dim=2048, num_layers=4, vace_layers=[0, 2], text_dim=64
        ),
        (13, 30, 52),
        128,
    ),
    "full": (
        reference.WAN21_VACE_1_3B,
        (9, 60, 104),
        512,
    ),
}
FRACTIONS = (0.1, 0.25, 0.5)


def build(size: str, device: str, dtype: torch.dtype):
    from diffusers import WanVACETransformer3DModel

    overrides, (frames, height, width), text_len = SIZES[size]
    torch.manual_seed(0)
    model = WanVACETransformer3DModel(**wan_config(vace_in_channels=96, **overrides))
    model = model.to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 16, frames, height, width, generator=gen),
        "encoder_hidden_states": torch.randn(1, text_len, overrides["text_dim"], generator=gen),
        "control_hidden_states": torch.randn(1, 96, frames, height, width, generator=gen),
    }
    return model, {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}, (frames, height // 2, width // 2)


def token_mask(grid: tuple[int, int, int], fraction: float) -> torch.Tensor:
    """A centred box of about `fraction` of each frame's tokens."""
    frames, h, w = grid
    side_h, side_w = max(1, round(h * fraction**0.5)), max(1, round(w * fraction**0.5))
    mask = torch.zeros(frames, h, w, dtype=torch.bool)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask[:, top : top + side_h, left : left + side_w] = True
    return mask


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def partial_forward(size: str, device: str, dtype: torch.dtype, reps: int) -> list[dict]:
    """Median time of a plain forward and of PARTIAL forwards at several active fractions (interleaved)."""
    model, inputs, grid = build(size, device, dtype)
    tokens = grid[0] * grid[1] * grid[2]
    text_len = inputs["encoder_hidden_states"].shape[1]
    cost = CostModel.from_model(model)
    only_generative = Policy(name="bench").replace(margin_width=0, context_ratio=0.0, selection="stride")

    def plain():
        model(timestep=torch.tensor([500.0], device=device), return_dict=False, **inputs)

    times: dict[str, list[float]] = {"full": []}
    active: dict[str, int] = {}
    plain()
    for _ in range(reps):
        times["full"].append(timed(plain, device))
        for fraction in FRACTIONS:
            mask = token_mask(grid, fraction)
            with (
                apply_hetcache(model, only_generative, mask=mask, strict=False, plan="FP") as handle,
                model.cache_context("cond"),
            ):
                model(timestep=torch.tensor([600.0], device=device), return_dict=False, **inputs)
                key = f"{fraction:.0%}"
                times.setdefault(key, []).append(
                    timed(
                        lambda: model(timestep=torch.tensor([500.0], device=device), return_dict=False, **inputs),
                        device,
                    )
                )
                active[key] = handle.stats()["active_fraction"][1]
    full = statistics.median(times["full"])
    rows = []
    for key, values in times.items():
        if key == "full":
            continue
        n_active = round(active[key] * tokens)
        flops_ratio = cost.uncached_forward(tokens, text_len) / sum(
            cost.forward(
                tokens, text_len, [n_active] * cost.num_layers, [n_active] * cost.num_vace_layers, text_kv=False
            ).values()
        )
        speedup = full / statistics.median(values)
        rows.append(
            {
                "active": f"{active[key]:.1%}",
                "full_ms": 1000 * full,
                "partial_ms": 1000 * statistics.median(values),
                "speedup": speedup,
                "flops_ratio": flops_ratio,
                "efficiency": speedup / flops_ratio,
                "spread_ms": 1000 * (max(values) - min(values)),
            }
        )
    return rows


def whole_run(policy: str, clips: str, reps: int) -> dict:
    """Reference workload: uncached vs policy, interleaved; wall-clock vs FLOPs speedup and engine overhead."""
    from hetcache.workloads import reference_workload
    from hetcache.workloads.execute import LoadedWorkload

    session = LoadedWorkload(reference_workload(clips=tuple(), weights="trained"))
    chosen = [c for c in session.clips if c.name in clips.split(",")]
    plain_times, cached_times, overhead, flops, flops_uncached, cache_bytes = [], [], [], 0.0, 0.0, 0
    session.generate(chosen[0])
    for _ in range(reps):
        for clip in chosen:
            plain_times.append(session.generate(clip).denoise_seconds)
            generation, stats = session.generate_cached(clip, policy)
            cached_times.append(generation.denoise_seconds)
            overhead.append(stats["phase_seconds"]["engine"] / generation.denoise_seconds)
            flops += stats["flops"]
            flops_uncached += stats["flops_uncached"]
            cache_bytes = max(cache_bytes, stats["cache_bytes"])
    speedup_time = statistics.median(plain_times) / statistics.median(cached_times)
    speedup_flops = flops_uncached / flops
    return {
        "policy": policy,
        "plan": stats["decisions"],
        "speedup_flops": speedup_flops,
        "speedup_time": speedup_time,
        "time_vs_flops": speedup_time / speedup_flops,
        "engine_overhead": statistics.median(overhead),
        "cache_mib": cache_bytes / 2**20,
    }


COMPILED_PLAN = "FPRPFPRF"


@torch.no_grad()
def compiled_run(size: str, device: str, dtype: torch.dtype, reps: int, backend: str) -> list[dict]:
    """Eager vs torch.compile, uncached vs hetcache: whole short runs (one context), interleaved rounds."""
    only_generative = Policy(name="bench").replace(margin_width=0, context_ratio=0.0, selection="stride")
    timesteps = [900.0 - 100.0 * i for i in range(len(COMPILED_PLAN))]
    runners = {}
    for cached in (False, True):
        for compiled in (False, True):
            model, inputs, grid = build(size, device, dtype)
            if cached:
                apply_hetcache(model, only_generative, mask=token_mask(grid, 0.25), strict=False, plan=COMPILED_PLAN)
            runners[(cached, compiled)] = torch.compile(model, backend=backend) if compiled else model

    def denoise(runner) -> None:
        with runner.cache_context("cond"):
            for t in timesteps:
                runner(timestep=torch.tensor([t], device=device), return_dict=False, **inputs)

    warmup = {}
    for key, runner in runners.items():  # the first run compiles every step type
        warmup[key] = timed(lambda runner=runner: denoise(runner), device)
    times: dict[tuple[bool, bool], list[float]] = {key: [] for key in runners}
    for _ in range(reps):
        for key, runner in runners.items():
            times[key].append(timed(lambda runner=runner: denoise(runner), device))
    base = statistics.median(times[(False, False)])
    return [
        {
            "engine": "hetcache" if cached else "uncached",
            "mode": f"compiled ({backend})" if compiled else "eager",
            "run_ms": 1000 * statistics.median(values),
            "min_ms": 1000 * min(values),
            "max_ms": 1000 * max(values),
            "speedup_vs_eager_uncached": base / statistics.median(values),
            "first_run_s": warmup[(cached, compiled)],
        }
        for (cached, compiled), values in times.items()
    ]


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=tuple(SIZES), default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--policy", default=str(BENCHMARK_BASE), help="policy for the whole-run measurement")
    parser.add_argument("--clips", default="box,moving")
    parser.add_argument("--skip-run", action="store_true", help="only the PARTIAL forward measurement")
    parser.add_argument("--skip-forward", action="store_true", help="only the whole-run measurement")
    parser.add_argument(
        "--compiled", choices=tuple(SIZES), default=None, help="also eager vs torch.compile at this size"
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.json"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    # A run that skips one part keeps that part's previous result in --out.
    kept = (harness.read_result(args.out) or {}) if (args.skip_forward or args.skip_run) else {}
    kept.pop("provenance", None)
    result = {**kept, "device": args.device, "size": args.size, "dtype": str(dtype), "threads": torch.get_num_threads()}
    if not args.skip_forward:
        result["partial_forward"] = partial_forward(args.size, args.device, dtype, args.reps)
        print(markdown(result["partial_forward"]))
    if not args.skip_run:
        result["whole_run"] = whole_run(args.policy, args.clips, max(1, args.reps // 2))
        print()
        print(markdown([result["whole_run"]]))
    if args.compiled:
        result["compiled"] = compiled_run(args.compiled, args.device, dtype, args.reps, args.backend)
        print()
        print(markdown(result["compiled"]))
    harness.write_result(args.out, result, script="engine.py", argv=argv, device=args.device)


if __name__ == "__main__":
    main()
