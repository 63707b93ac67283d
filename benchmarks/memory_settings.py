"""Quality cost of the memory knobs, measured on the reference workload at a held-out seed.

    python benchmarks/memory_settings.py                  # seed 7, every reference clip, 20 steps, CPU
    python benchmarks/memory_settings.py --clips box,moving --seed 11

The knobs that make Wan-VACE-14B at 720p x 81 frames fit a GPU (see docs/memory.md) are the policy's own: which
blocks keep caches (blocks without one run in full on PARTIAL steps), the cache dtype and host offload. Each setting
runs the same step plan and token choice (reference-psnr30's) on the tiny trained reference model, against the
uncached run of the same seed; the memory column is the plan for Wan2.1-VACE-14B at 720x1280x81 with CFG. Numbers
from the tiny reference model: they show the direction and size of each knob's cost there, not at 14B.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from hetcache import apply_hetcache, remove_hetcache
from hetcache.dtypes import CACHE_ONLY_DTYPES
from hetcache.memory import GIB, plan_memory
from hetcache.metrics import clip_quality, mean_quality
from hetcache.policy import Policy, load_policy
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.spec import Workload

BASE = "reference-psnr30"
BIG = dict(height=720, width=1280, num_frames=81)  # the memory column: Wan2.1-VACE-14B at 720p x 81, CFG


def settings() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Name -> (policy changes on the reference model, the same knob as plan_memory arguments on the 14B model).

    "auto" keeps the cache in the model's dtype (float32 for the reference model on CPU, bfloat16 for 14B on a GPU),
    so the bf16 row halves the reference model's cache as fp8 halves a bf16 model's."""
    out = {
        "every block cached": ({"partial_blocks": None, "partial_vace_blocks": None, "dtype": "auto"}, {}),
        "half the main blocks, no VACE": (
            {"partial_blocks": [0, 1, 2], "partial_vace_blocks": [], "dtype": "auto"},
            {"partial_blocks": tuple(range(20)), "partial_vace_blocks": ()},
        ),
        "a quarter of the main blocks, no VACE": (
            {"partial_blocks": [0], "partial_vace_blocks": [], "dtype": "auto"},
            {"partial_blocks": tuple(range(10)), "partial_vace_blocks": ()},
        ),
        "every block, bf16 cache": (
            {"partial_blocks": None, "partial_vace_blocks": None, "dtype": "bfloat16"},
            {"cache_dtype": "bfloat16"},
        ),
        "every block, offload": (
            {"partial_blocks": None, "partial_vace_blocks": None, "dtype": "auto", "offload": True},
            {"offload": True},
        ),
    }
    out["every block, fp8 cache"] = (
        {"partial_blocks": None, "partial_vace_blocks": None, "dtype": "float8_e4m3fn"},
        {"cache_dtype": "float8_e4m3fn"},
    )
    return out


def with_changes(policy: Policy, changes: dict[str, Any]) -> Policy:
    """`policy.replace(**changes)`, with a cache-only dtype (fp8) set on the cache section directly: the policy
    schema does not list it as a choice yet."""
    dtype = changes.get("dtype")
    if dtype in CACHE_ONLY_DTYPES:
        changes = {k: v for k, v in changes.items() if k != "dtype"}
        replaced = policy.replace(**changes)
        return dataclasses.replace(replaced, cache=dataclasses.replace(replaced.cache, dtype=dtype))
    return policy.replace(**changes)


@torch.no_grad()
def measure(clips: str | None, seed: int, only: str | None = None) -> dict[str, Any]:
    workload = Workload(seed=seed)
    session = LoadedWorkload(workload)
    chosen = [c for c in session.clips if clips is None or c.name in clips.split(",")]
    uncached = {clip.name: session.generate(clip) for clip in chosen}
    base = load_policy(BASE)
    rows = []
    chosen_settings = {k: v for k, v in settings().items() if only is None or k in only.split(",")}
    for name, (changes, knob) in chosen_settings.items():
        policy = with_changes(base, changes)
        qualities, flops, flops_uncached, latents = [], 0.0, 0.0, {}
        for clip in chosen:
            handle = apply_hetcache(session.pipe, policy)
            generation = session.generate(clip)
            stats = handle.stats()
            remove_hetcache(session.pipe)
            reference = uncached[clip.name]
            qualities.append(
                clip_quality(reference.frames, generation.frames, clip.mask, reference.latents, generation.latents)
            )
            flops += stats["flops"]
            flops_uncached += stats["flops_uncached"]
            latents[clip.name] = generation.latents
        quality = mean_quality(qualities)
        big = plan_memory("wan2.1-vace-14b", **BIG, policy=policy, **knob)
        rows.append(
            {
                "setting": name,
                "psnr": quality["psnr"],
                "psnr_mask": quality["psnr_mask"],
                "ssim": quality["ssim"],
                "latent_rel_l2": quality["latent_rel_l2"],
                "speedup_flops": flops_uncached / flops,
                "decisions": stats["decisions"],
                "wan14b_720p81_device_gib": big.device_total() / GIB,
                "wan14b_720p81_host_gib": big.host_bytes / GIB,
                "_latents": latents,
            }
        )
    exact = {r["setting"]: r.pop("_latents") for r in rows}
    every, offloaded = exact.get("every block cached"), exact.get("every block, offload")
    for row in rows:
        if row["setting"] == "every block, offload" and every is not None:
            row["bit_equal_to_resident"] = all(torch.equal(every[k], offloaded[k]) for k in every)
    return {
        "workload": workload.to_dict(),
        "base_policy": BASE,
        "clips": [c.name for c in chosen],
        "rows": rows,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting (reference model) | PSNR dB | mask PSNR dB | FLOPs speedup | 14B 720p×81: GPU GiB / host GiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['psnr']:.2f} | {r['psnr_mask']:.2f} | {r['speedup_flops']:.2f}x "
            f"| {r['wan14b_720p81_device_gib']:.1f} / {r['wan14b_720p81_host_gib']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", help="comma-separated reference clip names (default: all)")
    parser.add_argument("--seed", type=int, default=7, help="held-out seed (the shipped policies were tuned at 0)")
    parser.add_argument("--settings", help="comma-separated setting names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_settings.json"))
    args = parser.parse_args(argv)
    record = measure(args.clips, args.seed, args.settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
