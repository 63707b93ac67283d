"""The real architectures on CPU: all-FULL exactness, PARTIAL-forward efficiency, bookkeeping, cache bytes.

    python benchmarks/real_architectures.py            # Wan 1.3B, Wan 14B and LTX-Video 2B widths, a few blocks each
    python benchmarks/real_architectures.py --reps 3 --out /tmp/real.json

Real diffusers classes with random weights (no hub): Wan2.1-VACE-1.3B (`WanVACETransformer3DModel`, width 1536), a
Wan2.2 A14B expert (`WanTransformer3DModel`, width 5120) and LTX-Video 0.9 2B (`LTXVideoTransformer3DModel`, width
2048, packed latents, the mask passed explicitly), each at reduced depth so that it fits two shared cores. Per
architecture: hetcache with an all-FULL plan against the stock model (fp32), the wall-clock speedup of PARTIAL
forwards over their FLOPs speedup (interleaved with stock forwards, medians and min-max), the engine's bookkeeping
share of the hooked forward (phase_seconds), and the engine's cache bytes against the memory plan. The same helpers
drive the GPU script (benchmarks/gpu_run.py) at full size.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import harness
import torch

from hetcache import apply_hetcache
from hetcache.architectures import ARCHITECTURES, architecture_of
from hetcache.cost import CostModel
from hetcache.engine.registry import family_of, model_shape
from hetcache.engine.wan import VACE_MASK_CHANNELS
from hetcache.memory import box_token_mask, plan_memory, token_grid
from hetcache.policy import Policy
from hetcache.reference import cast_like_from_pretrained

# name: (shipped architecture, depth overrides, (height, width, frames) in pixels)
CPU_CASES: dict[str, tuple[str, dict[str, Any], tuple[int, int, int]]] = {
    "wan2.1-vace-1.3b (4 of 30 blocks)": ("wan2.1-vace-1.3b", dict(num_layers=4, vace_layers=[0, 2]), (128, 256, 9)),
    "wan2.2-a14b expert (2 of 40 blocks)": ("wan2.2-t2v-a14b", dict(num_layers=2), (128, 128, 9)),
    # 384 tokens, as the 1.3B case: 3 latent frames of 8 x 16 tokens (one token = 32 x 32 pixels over 8 frames)
    "ltx-video-2b (4 of 28 blocks)": ("ltx-video-2b", dict(num_layers=4), (256, 512, 17)),
}
FRACTIONS = (0.25, 0.5)
TEXT_LEN = 64  # prompt tokens on CPU (512 in the released pipelines; the GPU script uses 512)
# Only the mask is recomputed on PARTIAL steps: the active share is the mask's share, known in advance.
ONLY_MASK = Policy(name="only-mask").replace(margin_width=0, context_ratio=0.0, selection="stride")


def build(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: Any):
    """A shipped architecture (with `overrides`, e.g. fewer blocks) with seeded random weights, cast like
    from_pretrained(torch_dtype=dtype)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = ARCHITECTURES[name].build(**overrides)
    return cast_like_from_pretrained(model, dtype)


def clip_inputs(model, size: tuple[int, int, int], fraction: float, text_len: int, seed: int = 1) -> tuple[dict, Any]:
    """Transformer kwargs as the family's pipeline passes them (latents, prompt, Wan-VACE control with the mask, LTX's
    packed latents with their sizes and the prompt's attention mask) and the token mask [1, T', h, w]."""
    config, shape = model.config, model_shape(model)
    grid = token_grid(architecture_of(model), *size)
    mask = box_token_mask(grid, fraction)
    gen = torch.Generator().manual_seed(seed)
    if family_of(model).cfg_in_batch:  # LTX-Video: packed latents [B, N, C] (patch 1)
        inputs = {
            "hidden_states": torch.randn(1, math.prod(grid), shape.in_channels, generator=gen),
            "encoder_hidden_states": torch.randn(1, text_len, shape.text_dim, generator=gen),
            "encoder_attention_mask": torch.ones(1, text_len),
        }
        sizes = dict(num_frames=grid[0], height=grid[1], width=grid[2], rope_interpolation_scale=(8 / 25, 32, 32))
        cast = {k: v.to(device=model.device, dtype=model.dtype) for k, v in inputs.items()}
        return {**cast, **sizes}, mask.to(model.device)
    latent = (grid[0], grid[1] * shape.patch[1], grid[2] * shape.patch[2])
    inputs = {
        "hidden_states": torch.randn(1, shape.in_channels, *latent, generator=gen),
        "encoder_hidden_states": torch.randn(1, text_len, shape.text_dim, generator=gen),
    }
    if hasattr(model, "vace_blocks"):
        cells = mask.float().repeat_interleave(config.patch_size[1], 2).repeat_interleave(config.patch_size[2], 3)
        control = torch.randn(1, config.vace_in_channels, *latent, generator=gen)
        channels = VACE_MASK_CHANNELS.stop - VACE_MASK_CHANNELS.start
        control[:, VACE_MASK_CHANNELS] = cells.unsqueeze(1).expand(1, channels, *latent)
        inputs["control_hidden_states"] = control
    return {k: v.to(device=model.device, dtype=model.dtype) for k, v in inputs.items()}, mask.to(model.device)


def sync(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: torch.device | str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def call(model, inputs: dict, t: float):
    return model(timestep=torch.tensor([t], device=model.device), return_dict=False, **inputs)[0]


def hooked(model, policy: Policy, mask, plan: str):
    """apply_hetcache with the mask given explicitly (Wan T2V has no control states to read it from)."""
    return apply_hetcache(model, policy, mask=mask, strict=False, plan=plan)


@torch.no_grad()
def exactness(model, inputs: dict, mask, times: tuple[float, ...] = (900.0, 800.0)) -> dict[str, Any]:
    """Every step FULL with every block cached vs the stock model: max |difference| per step, bit-equality."""
    stock = [call(model, inputs, t) for t in times]
    with hooked(model, Policy(name="all-full"), mask, "F" * len(times)), model.cache_context("cond"):
        cached = [call(model, inputs, t) for t in times]
    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(stock, cached, strict=True)]
    scale = max(a.float().abs().max().item() for a in stock)
    return {"max_abs_diff": max(diffs), "output_scale": scale, "bit_equal": all(d == 0.0 for d in diffs)}


@torch.no_grad()
def partial_efficiency(
    model, size: tuple[int, int, int], text_len: int, fractions=FRACTIONS, reps: int = 3, offload: bool = False
) -> list[dict[str, Any]]:
    """Stock forwards and PARTIAL forwards at each mask share, interleaved: speedup vs FLOPs speedup, engine share
    of the hooked PARTIAL forward, and the engine's cache bytes against the memory plan."""
    device = model.device
    cost = CostModel.from_model(model)
    policy = ONLY_MASK.replace(offload=offload)
    cases = {f: clip_inputs(model, size, f, text_len) for f in fractions}
    stock_inputs = cases[fractions[0]][0]
    call(model, stock_inputs, 500.0)  # warm-up
    stock: list[float] = []
    partial: dict[float, list[float]] = {f: [] for f in fractions}
    engine: dict[float, list[float]] = {f: [] for f in fractions}
    measured: dict[float, dict] = {}
    for _ in range(reps):
        stock.append(timed(lambda: call(model, stock_inputs, 500.0), device))
        for f, (inputs, mask) in cases.items():
            with hooked(model, policy, mask, "FP") as handle, model.cache_context("cond"):
                call(model, inputs, 600.0)
                state = handle.state
                before = dict(state.phase_seconds)
                partial[f].append(timed(lambda inputs=inputs: call(model, inputs, 500.0), device))
                after = state.phase_seconds
                engine[f].append((after["engine"] - before["engine"]) / (after["total"] - before["total"]))
                measured[f] = {"stats": handle.stats(), "mask": mask}
    full = statistics.median(stock)
    rows = []
    for f in fractions:
        stats, mask = measured[f]["stats"], measured[f]["mask"]
        tokens = stats["tokens"]
        active = round(stats["active_fraction"][1] * tokens)
        flops = sum(
            cost.forward(tokens, text_len, [active] * cost.num_layers, [active] * cost.num_vace_layers, text_kv=False)
            .values()
        )  # fmt: skip
        flops_speedup = cost.uncached_forward(tokens, text_len) / flops
        wall = [full / t for t in partial[f]]
        plan = plan_memory(model, height=size[0], width=size[1], num_frames=size[2], policy=policy, mask=mask,
                           cfg=False, text_len=text_len, steps="FP")  # fmt: skip
        rows.append(
            {
                "mask_fraction": f,
                "active_fraction": active / tokens,
                "tokens": tokens,
                "offload": offload,
                "stock_s": spread(stock),
                "partial_s": spread(partial[f]),
                "speedup": statistics.median(wall),
                "speedup_min_max": [min(wall), max(wall)],
                "flops_speedup": flops_speedup,
                "wall_over_flops": statistics.median(wall) / flops_speedup,
                "engine_share": spread(engine[f]),
                "cache_bytes": stats["cache_bytes"],
                "plan_cache_bytes": plan.cache_bytes,
            }
        )
    return rows


def run_case(name: str, reps: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    arch_name, overrides, size = CPU_CASES[name]
    model = build(arch_name, dtype=dtype, **overrides)
    inputs, mask = clip_inputs(model, size, FRACTIONS[0], TEXT_LEN)
    grid = token_grid(ARCHITECTURES[arch_name], *size)
    result = {
        "architecture": arch_name,
        "class": type(model).__name__,
        "overrides": overrides,
        "width": ARCHITECTURES[arch_name].dim,
        "size": list(size),
        "tokens": grid[0] * grid[1] * grid[2],
        "text_len": TEXT_LEN,
        "dtype": str(dtype).removeprefix("torch."),
        "exactness": exactness(model, inputs, mask),
        "partial": partial_efficiency(model, size, TEXT_LEN, reps=reps),
    }
    del model
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| architecture | width | tokens | all-FULL max diff | mask | active | PARTIAL speedup (min-max) "
        "| FLOPs speedup | wall/FLOPs | engine share | cache bytes = plan |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["partial"]:
            lo, hi = row["speedup_min_max"]
            lines.append(
                f"| {r['architecture']} ({r['overrides'].get('num_layers')} blocks) | {r['width']} | {r['tokens']} "
                f"| {r['exactness']['max_abs_diff']:.2g} | {row['mask_fraction']:.0%} | {row['active_fraction']:.1%} "
                f"| {row['speedup']:.2f}x ({lo:.2f}-{hi:.2f}) | {row['flops_speedup']:.2f}x "
                f"| {row['wall_over_flops']:.2f} | {100 * row['engine_share']['median']:.3f} % "
                f"| {'yes' if row['cache_bytes'] == row['plan_cache_bytes'] else 'NO'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CPU_CASES), help="comma-separated case names")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_architectures.json"))
    args = parser.parse_args(argv)
    names = [n for n in CPU_CASES if n in args.cases.split(",")]
    results = [run_case(name, args.reps) for name in names]
    record = {"device": "cpu", "threads": torch.get_num_threads(), "reps": args.reps, "cases": results}
    harness.write_result(args.out, record, script="real_architectures.py", argv=argv)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
