"""Profiler benchmark: overhead vs an unprofiled run, and peak extra memory with attention contribution on.

    python benchmarks/profiler.py                    # reference workload (256x256x17, 20 steps, CFG) on CPU
    python benchmarks/profiler.py --steps 10 --repeats 3 --clips moving   # the hetcache commands' workload flags

Overhead: the same clip is run plain, profiled with drift only, and profiled with attention contribution every 5th
step, interleaved (rotating order), medians of the denoising time (first transformer call → last step) and of the
whole call (profiling includes the end-of-run reduction). Target: drift only ≤ 1.5×.

Memory: each configuration runs in a fresh process (glibc mmap threshold fixed at 64 KiB) after a warm-up run; peak
RSS (CPU) or max allocated (CUDA) above the state before the run; profiled minus plain = the profiler's extra memory.
The chunked attention mass is also measured alone at growing token counts: its peak grows as heads·chunk·N, far
below the N×N matrix it never materialises.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import torch
from hetcache.profiler.attention import transient_bytes

CONFIGS = {"plain": None, "drift": 0, "attention": 5}
HEADS, HEAD_DIM = 4, 32


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak(device: str) -> int:
    """Reset the peak-memory counter; return the current usage it is measured against."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    return _rss_bytes("VmRSS")


def _peak(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _rss_bytes("VmHWM")


def _run(session, config: str, chunk: int) -> tuple[float, float, dict | None]:
    """(denoising seconds, whole-call seconds, profile data) of one run in configuration `config`."""
    from hetcache.profiler import profile_session

    clip = session.clips[0]
    started = time.perf_counter()
    if CONFIGS[config] is None:
        denoise = session.generate(clip, decode=False).denoise_seconds
        return denoise, time.perf_counter() - started, None
    result = profile_session(session, attention_every=CONFIGS[config], attention_chunk=chunk)
    wall = time.perf_counter() - started
    return result.data["clips"][0]["denoise_seconds"], wall, result.data


def timing(args) -> dict:
    from hetcache.workloads.execute import LoadedWorkload

    session = LoadedWorkload(harness.workload_from_flags(args))
    _run(session, "plain", args.chunk)  # warm-up (also memoises the clip's VAE conditioning)
    times = {name: {"denoise": [], "wall": []} for name in CONFIGS}
    names = list(CONFIGS)
    data = None
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            denoise, wall, result = _run(session, name, args.chunk)
            times[name]["denoise"].append(denoise)
            times[name]["wall"].append(wall)
            data = result if name == "attention" else data
    medians = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    tokens = data["clips"][0]["tokens"]
    return {"times": times, "medians": medians, "tokens": tokens, "workload": session.workload.to_dict()}


def memory_probe(args) -> dict:
    """Child process: peak memory of one run in `args.probe` configuration above the loaded state."""
    from hetcache.workloads.execute import LoadedWorkload

    session = LoadedWorkload(harness.workload_from_flags(args))
    _run(session, "plain", args.chunk)  # warm-up: the clip's VAE conditioning is memoised, so only denoising remains
    base = _reset_peak(args.device)
    _, _, data = _run(session, args.probe, args.chunk)
    record = {"config": args.probe, "peak_extra_bytes": _peak(args.device) - base}
    if data is not None:
        record["profiler_bytes"] = data["memory"]["profiler_bytes"]
        record["attention_transient_bytes"] = data["memory"]["attention_transient_bytes"]
    return record


def mass_probe(args) -> dict:
    """Child process: peak memory of the chunked attention mass alone for N tokens (half of them queries)."""
    from hetcache.attention_mass import key_attention_mass

    tokens, chunk = args.mass_tokens, args.chunk
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(tokens // 2, HEADS, HEAD_DIM, generator=gen).to(args.device)
    key = torch.randn(tokens, HEADS, HEAD_DIM, generator=gen).to(args.device)
    key_attention_mass(query, key, chunk=chunk)  # warm-up: kernels' one-time workspaces are not the algorithm's
    base = _reset_peak(args.device)
    key_attention_mass(query, key, chunk=chunk)
    return {"tokens": tokens, "chunk": chunk, "peak_extra_bytes": _peak(args.device) - base}


def _child(args, *extra: str) -> dict:
    command = [sys.executable, __file__, *args.argv, *extra]  # the same workload, in a fresh process
    # Fixed mmap threshold: every large tensor is mapped and unmapped on free, so RSS tracks live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args) -> dict:
    runs = {name: _child(args, "--probe", name) for name in CONFIGS}
    plain = runs["plain"]["peak_extra_bytes"]
    sweep = []
    for tokens in args.mass_tokens_list:
        for chunk in (64, 256):
            args.chunk, saved = chunk, args.chunk
            record = _child(args, "--mass-probe", "--mass-tokens", str(tokens))
            args.chunk = saved
            record["model_bytes"] = transient_bytes(HEADS, chunk, tokens)
            record["dense_bytes"] = HEADS * (tokens // 2) * tokens * 4
            sweep.append(record)
    return {"runs": runs, "extra_vs_plain": {k: v["peak_extra_bytes"] - plain for k, v in runs.items()}, "mass": sweep}


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def report(result: dict) -> str:
    med = result["timing"]["medians"]
    base = med["plain"]
    lines = [
        f"Reference workload, {result['timing']['tokens']} tokens, "
        f"{result['timing']['workload']['steps']} steps with CFG, device {result['device']}, "
        f"{result['repeats']} interleaved repeats (medians).",
        "",
        "| run | denoise s | × plain | whole call s | × plain | peak extra MiB vs plain |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"plain": "unprofiled", "drift": "drift only", "attention": "drift + attention every 5th step"}
    for name, label in labels.items():
        extra = result["memory"]["extra_vs_plain"][name]
        lines.append(
            f"| {label} | {med[name]['denoise']:.2f} | {med[name]['denoise'] / base['denoise']:.2f} | "
            f"{med[name]['wall']:.2f} | {med[name]['wall'] / base['wall']:.2f} | {_mib(extra)} |"
        )
    attention = result["memory"]["runs"]["attention"]
    lines += [
        "",
        f"Profiler buffers (accounted): {_mib(attention['profiler_bytes'])} MiB; attention transient bound "
        f"3·H·chunk·N·4 B = {_mib(attention['attention_transient_bytes'])} MiB.",
        "",
        "| tokens N | chunk | measured peak MiB | 3·H·chunk·N·4 B | dense H·(N/2)·N·4 B |",
        "|---|---|---|---|---|",
    ]
    for row in result["memory"]["mass"]:
        lines.append(
            f"| {row['tokens']} | {row['chunk']} | {_mib(row['peak_extra_bytes'])} | {_mib(row['model_bytes'])} | "
            f"{_mib(row['dense_bytes'])} |"
        )
    ratio = med["drift"]["denoise"] / base["denoise"]
    lines += ["", f"drift-only overhead {ratio:.2f}× (target ≤ 1.5×): {'PASS' if ratio <= 1.5 else 'FAIL'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.workload_flags(parser, steps=20, height=256, width=256, frames=17, clips="box", device="cpu")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mass-tokens-list", type=int, nargs="+", default=[1280, 5120, 20480])
    parser.add_argument("--json", type=Path, default=Path("runs/bench/profiler.json"))
    parser.add_argument("--probe", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--mass-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mass-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    if args.probe:
        print(json.dumps(memory_probe(args)))
        return
    if args.mass_probe:
        print(json.dumps(mass_probe(args)))
        return
    result = {"device": args.device, "repeats": args.repeats, "chunk": args.chunk}
    result["memory"] = memory(args)
    result["timing"] = timing(args)
    text = report(result)
    print(text)
    harness.write_result(
        args.json, {**result, "report": text}, script="profiler.py", argv=args.argv, device=args.device
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
