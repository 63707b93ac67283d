"""The prepared GPU run (driven by benchmarks/gpu.sh): hetcache at Wan2.1-VACE-1.3B scale, one JSON out.

    bash benchmarks/gpu.sh                      # one H100/H200: 1.3B architecture, 480x832x81, bf16 (random weights)
    bash benchmarks/gpu.sh --dry-run            # the same sections end to end on CPU at tiny sizes (tests run it)

Sections, each written to the JSON as soon as it is done (a run cut short keeps what it measured):
exactness (every step FULL vs the stock model, bf16), partial_forward (PARTIAL-forward wall-clock vs FLOPs speedup,
offload off and on, interleaved, medians with min-max), memory (torch.cuda.max_memory_allocated and the memory held
after a run against the memory plan, offload off and on), whole_run (uncached vs the paper policy vs a tuned policy,
interleaved, medians), profiler (overhead of profiling with attention contribution against a plain run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

import harness
import real_architectures as ra

from hetcache import apply_hetcache
from hetcache.memory import plan_memory
from hetcache.policy import load_policy

ARCH = "wan2.1-vace-1.3b"
FULL = dict(overrides={}, size=(480, 832, 81), text_len=512, steps=20, reps=3, run_reps=2, dtype="bfloat16")
DRY = dict(
    overrides=dict(num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_layers=3, vace_layers=[0, 2]),
    size=(64, 64, 9),
    text_len=16,
    steps=4,
    reps=2,
    run_reps=1,
    dtype="float32",
)
PAPER, TUNED = "wan21-vace-1.3b-paper", "reference-psnr30"
FRACTIONS = (0.1, 0.25, 0.5)


class Record:
    """The JSON result, rewritten after every section."""

    def __init__(self, path: Path, data: dict[str, Any], argv: list[str] | None, device: str):
        self.path, self.data, self.argv, self.device = path, data, argv, device
        self.started = time.perf_counter()

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.data["elapsed_s"] = time.perf_counter() - self.started
        plain = json.loads(json.dumps(self.data, default=str))
        harness.write_result(self.path, plain, script="gpu_run.py", argv=self.argv, device=self.device)


def fitted(policy_name: str, model) -> Any:
    """A shipped policy with its block lists cut to the model's blocks (the dry run's model has three)."""
    policy = load_policy(policy_name)
    layers = policy.layers
    keep = lambda blocks, n: None if blocks is None else [i for i in blocks if i < n]  # noqa: E731
    return policy.replace(
        model=None,
        partial_blocks=keep(layers.partial_blocks, model.config.num_layers),
        partial_vace_blocks=keep(layers.partial_vace_blocks, len(model.vace_blocks)),
    )


def memory_section(model, setup: dict) -> list[dict[str, Any]]:
    """Run F, P, R calls for two contexts; the memory held afterwards and the peak vs the plan (CUDA only)."""
    cuda = model.device.type == "cuda"
    inputs, mask = ra.clip_inputs(model, setup["size"], 0.25, setup["text_len"])
    uncond = {**inputs, "encoder_hidden_states": -inputs["encoder_hidden_states"]}
    rows = []
    for offload in (False, True):
        policy = fitted(PAPER, model).replace(offload=offload)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with apply_hetcache(model, policy, strict=False, plan="FPR") as handle:  # measured while the caches live
            with torch.no_grad():
                for t in (900.0, 800.0, 700.0):
                    for name, kwargs in (("cond", inputs), ("uncond", uncond)):
                        with model.cache_context(name):
                            ra.call(model, kwargs, t)
            size = setup["size"]
            plan = plan_memory(model, height=size[0], width=size[1], num_frames=size[2], policy=policy, mask=mask,
                               text_len=setup["text_len"], steps="FPR")  # fmt: skip
            row = {
                "offload": offload,
                "engine_cache_bytes": handle.stats()["cache_bytes"],
                "plan_cache_bytes": plan.cache_bytes,
                "plan_device_bytes": plan.device_bytes,
                "plan_host_bytes": plan.host_bytes,
                "plan_activation_estimate": plan.activation_bytes,
            }
            if cuda:
                torch.cuda.synchronize()
                row["held_after_run_bytes"] = torch.cuda.memory_allocated() - base
                row["peak_above_weights_bytes"] = torch.cuda.max_memory_allocated() - base
                row["held_minus_plan_device_bytes"] = row["held_after_run_bytes"] - plan.device_bytes
                row["peak_over_plan_device_plus_activations"] = row["peak_above_weights_bytes"] / max(
                    1, plan.device_bytes + plan.activation_bytes
                )
        rows.append(row)
    return rows


def session_for(model, setup: dict, steps: int, scratch: Path):
    """A workload session: WanVACEPipeline with the reference VAE (random), this transformer, one box clip."""
    from diffusers import WanVACEPipeline
    from safetensors.torch import save_file

    from hetcache import reference
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import ClipSource, Workload

    height, width, frames = setup["size"]
    gen = torch.Generator().manual_seed(1234)
    embeds = {k: torch.randn(1, setup["text_len"], model.config.text_dim, generator=gen) for k in
              ("prompt_embeds", "negative_prompt_embeds")}  # fmt: skip
    path = scratch / "prompt_embeds.safetensors"
    save_file(embeds, str(path))
    device = str(model.device)
    pipe = WanVACEPipeline(
        vae=reference.random_vae().to(device),
        transformer=model,
        scheduler=reference.scheduler(),
        text_encoder=None,
        tokenizer=None,
    )
    pipe.set_progress_bar_config(disable=True)
    workload = Workload(
        name=f"{ARCH}-architecture",
        weights="random",
        height=height,
        width=width,
        num_frames=frames,
        steps=steps,
        device=device,
        dtype=setup["dtype"],
        prompt_embeds=str(path),
        clips=(ClipSource(name="box", kind="box"),),
    )
    return LoadedWorkload(workload, pipe=pipe)


def whole_run(model, setup: dict, scratch: Path) -> dict[str, Any]:
    """Uncached, paper policy and a tuned policy, interleaved (rotating order); medians of the denoising time."""
    session = session_for(model, setup, setup["steps"], scratch)
    clip = session.clips[0]
    configs = {"uncached": None, PAPER: fitted(PAPER, model), TUNED: fitted(TUNED, model)}
    session.generate(clip, decode=False)  # warm-up, memoises the VAE conditioning
    times: dict[str, list[float]] = {name: [] for name in configs}
    stats: dict[str, dict] = {}
    names = list(configs)
    for rep in range(setup["run_reps"]):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            policy = configs[name]
            if policy is None:
                generation = session.generate(clip, decode=False)
            else:
                generation, stats[name] = session.generate_cached(clip, policy, strict=False, decode=False)
            times[name].append(generation.denoise_seconds)
    plain = statistics.median(times["uncached"])
    out: dict[str, Any] = {"steps": setup["steps"], "uncached_s": ra.spread(times["uncached"])}
    for name in (PAPER, TUNED):
        s = stats[name]
        out[name] = {
            "denoise_s": ra.spread(times[name]),
            "speedup_time": plain / statistics.median(times[name]),
            "speedup_flops": s["flops_uncached"] / s["flops"],
            "decisions": s["decisions"],
            "engine_share": s["phase_seconds"]["engine"] / max(statistics.median(times[name]), 1e-9),
            "cache_bytes": s["cache_bytes"],
        }
    out["note"] = f"{TUNED} was tuned on the reference model, not on this architecture (applied with strict=False)"
    return out


def profiler_overhead(model, setup: dict, scratch: Path) -> dict[str, Any]:
    """Plain run vs profiled with attention contribution every 5th step, interleaved; medians of denoising time."""
    from hetcache.profiler import profile_session

    steps = max(4, setup["steps"] // 2)
    session = session_for(model, setup, steps, scratch)
    clip = session.clips[0]
    session.generate(clip, decode=False)
    plain, profiled = [], []
    for _ in range(setup["run_reps"]):
        plain.append(session.generate(clip, decode=False).denoise_seconds)
        result = profile_session(session, attention_every=5)
        profiled.append(result.data["clips"][0]["denoise_seconds"])
    memory = result.data.get("memory", {})
    return {
        "steps": steps,
        "plain_s": ra.spread(plain),
        "profiled_s": ra.spread(profiled),
        "overhead": statistics.median(profiled) / statistics.median(plain),
        "attention_every": 5,
        "profiler_memory": memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the script, not speed)")
    parser.add_argument("--device", help="default cuda (cpu with --dry-run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = parser.parse_args(argv)
    setup = DRY if args.dry_run else FULL
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_run: error: no CUDA device. Fix: run on a GPU machine, or pass --dry-run.", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    record = Record(
        args.out,
        {
            "dry_run": args.dry_run,
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "torch": torch.__version__,
            "architecture": ARCH,
            "overrides": setup["overrides"],
            "size": list(setup["size"]),
            "dtype": setup["dtype"],
        },
        argv,
        device,
    )
    model = ra.build(ARCH, device=device, dtype=getattr(torch, setup["dtype"]), **setup["overrides"])
    record.put("tokens", ra.token_grid(ra.architecture_of(model), *setup["size"]))
    inputs, mask = ra.clip_inputs(model, setup["size"], 0.25, setup["text_len"])
    if "exactness" not in skip:
        record.put("exactness", ra.exactness(model, inputs, mask))
    if "partial_forward" not in skip:
        rows = []
        for offload in (False, True):
            rows += ra.partial_efficiency(model, setup["size"], setup["text_len"], FRACTIONS, setup["reps"], offload)
        record.put("partial_forward", rows)
    if "memory" not in skip:
        record.put("memory", memory_section(model, setup))
    with tempfile.TemporaryDirectory() as scratch:
        if "whole_run" not in skip:
            record.put("whole_run", whole_run(model, setup, Path(scratch)))
        if "profiler" not in skip:
            record.put("profiler", profiler_overhead(model, setup, Path(scratch)))
    record.put("complete", True)
    print(json.dumps({k: record.data[k] for k in ("device", "elapsed_s", "complete")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
