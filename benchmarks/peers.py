"""Peers benchmark: hetcache against the field, side by side on the same workload, seed and clips.

    python benchmarks/peers.py --quick                      # reference workload, CPU, a few minutes
    python benchmarks/peers.py --weights random --quick     # plumbing only: random weights say nothing of quality
    python benchmarks/peers.py --pipeline DIR --prompt-embeds FILE   # a saved WanVACEPipeline on the reference clips
    python benchmarks/peers.py --device cuda --size full    # Wan2.1-VACE-1.3B architecture, 480x832x33 (speed only)

Rows: uncached; fewer steps; timestep-only reuse (hetcache's plan with no PARTIAL steps, TeaCache-style); diffusers'
FirstBlockCache, MagCache (calibrated first), TaylorSeer (patterns that hook Wan blocks), PyramidAttentionBroadcast;
cache-dit's DBCache (optional); HetCache with the paper-settings policy, also scored as the paper's own code scores
(pasted back, whole frame); HetCache with tuned policies. Each is run at its operating points on every clip, runs
interleaved across rows for `--reps` rounds; quality is measured against the uncached output of the same seed under
the same editing contract (`--contract`, every row; the paper's-evaluation row always pastes, its reference
too). Writes benchmarks/results/peers.{md,json,html} (and .png with kaleido).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import peers_methods as pm
import peers_replay
import peers_report

from hetcache import reference
from hetcache.atomic import json_safe
from hetcache.contracts import parse_contract
from hetcache.errors import InputError
from hetcache.metrics import clip_quality, latent_rel_l2, mean_quality, video_psnr
from hetcache.policy import is_policy_file, load_policy
from hetcache.workloads.execute import LoadedWorkload

QUICK = dict(height=128, width=128, num_frames=17, steps=20, clips="box,moving", reps=3)
FULL = dict(height=480, width=832, num_frames=33, steps=20, clips="box", reps=2)
FULL_TRANSFORMER = reference.WAN21_VACE_1_3B
FULL_TEXT_LEN = 512
QUALITY_KEYS = ("psnr", "psnr_mask", "psnr_seam", "ssim", "ssim_mask", "ssim_seam", "latent_rel_l2")
SOURCE_KEYS = ("psnr_vs_source", "psnr_uncached_vs_source")  # the paper's-evaluation row: against the source clip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CPU (the default on CPU)")
    parser.add_argument("--size", choices=("quick", "full"), default=None, help="full: Wan2.1-VACE-1.3B, 480x832x33")
    harness.workload_flags(parser, device="cpu", seed=0)
    parser.add_argument("--reps", type=int, help="interleaved timing rounds (medians reported)")
    parser.add_argument(
        "--tuned",
        action="append",
        type=Path,
        help="tuned policy JSON or a folder of them, e.g. a Pareto ladder (repeatable); default: policies/reference-*",
    )
    parser.add_argument(
        "--methods", help=f"only these rows, comma-separated from {','.join(pm.SHORT_NAMES)} (uncached always runs)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/peers"), help="output stem")
    parser.add_argument("--no-figure", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--render", type=Path, help="only re-write the table and figure from this peers JSON file")
    args = parser.parse_args(argv)
    args.size = args.size or ("full" if args.device.startswith("cuda") and not args.quick else "quick")
    defaults = FULL if args.size == "full" else QUICK
    for key, flag in (("height", "height"), ("width", "width"), ("num_frames", "frames"), ("steps", "steps")):
        if getattr(args, flag) is None:
            setattr(args, flag, defaults[key])
    args.clips = args.clips or defaults["clips"]
    args.reps = args.reps or defaults["reps"]
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.size == "full":
        args.weights = "random"
    if args.pipeline and args.size == "full":
        raise InputError("--pipeline and --size full exclude each other.", "--size full builds its own random model.")
    if args.pipeline:
        args.weights = "trained"
    args.weights = args.weights or ("trained" if reference.trained_available() else "random")
    if args.steps < 4:
        raise InputError(f"--steps {args.steps} is too few for a caching comparison.", "use at least 4 steps.")
    return args


def build_session(args: argparse.Namespace, scratch: Path) -> LoadedWorkload:
    """The reference workload at the chosen size; `full` swaps in a random Wan2.1-VACE-1.3B-architecture model."""
    workload = harness.workload_from_flags(args)
    if args.size != "full":
        return LoadedWorkload(workload)
    from diffusers import WanVACEPipeline
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1234)
    embeds = {
        name: torch.randn(1, FULL_TEXT_LEN, FULL_TRANSFORMER["text_dim"], generator=generator)
        for name in ("prompt_embeds", "negative_prompt_embeds")
    }
    path = scratch / "prompt_embeds.safetensors"
    save_file(embeds, str(path))
    pipe = WanVACEPipeline(
        vae=reference.random_vae(),
        transformer=reference.cast_like_from_pretrained(
            reference.random_transformer(**FULL_TRANSFORMER), getattr(torch, args.dtype)
        ),
        scheduler=reference.scheduler(),
        text_encoder=None,
        tokenizer=None,
    )
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedWorkload(workload.replace(prompt_embeds=str(path), name="wan21-vace-1.3b-architecture"), pipe=pipe)


def _policy_files(folder: Path) -> list[Path]:
    """The policy files of a folder (a Pareto ladder also holds its index.json, which is not a policy)."""
    return [path for path in sorted(folder.glob("*.json")) if is_policy_file(path)]


def tuned_policies(paths: list[Path] | None) -> list[tuple[str, Any]]:
    """The tuned rows: given files, else every shipped `reference-*` policy; a hand-set one is labelled so."""
    if paths:
        files = [f for path in paths for f in (_policy_files(path) if path.is_dir() else [path])]
        if not files:
            raise InputError(f"--tuned {' '.join(map(str, paths))} holds no policy file.", "pass policy JSON files.")
        loaded = [(path.stem, load_policy(path)) for path in files]
    else:
        from hetcache import policies

        loaded = [(name, policies.load(name)) for name in policies.names() if name.startswith("reference-")]
    hand = " (hand-set, not tuned)"
    return [(name + hand if p.provenance.get("source") == "hand" else name, p) for name, p in loaded]


class Sessions:
    """The benchmark's session and one per other editing contract a row asks for (sharing its pipeline)."""

    def __init__(self, session: LoadedWorkload):
        self.main = session
        self.by_contract = {session.workload.contract: session}

    def of(self, point: pm.Point) -> LoadedWorkload:
        contract = parse_contract(point.contract or self.main.workload.contract).name
        if contract not in self.by_contract:
            workload = self.main.workload.replace(contract=contract)
            self.by_contract[contract] = LoadedWorkload(workload, pipe=self.main.pipe)
        return self.by_contract[contract]


def _generate(point: pm.Point, session: LoadedWorkload, clip, steps_sessions: dict, decode: bool) -> dict[str, Any]:
    cuda = session.workload.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with pm.attached(point, session, steps_sessions, clip) as probe:
        generation = probe.session.generate(clip, decode=decode)
    record = {"generation": generation, "flops": probe.flops(), "stats": probe.stats()}
    record["peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    return record


def measure(session: LoadedWorkload, points: list[pm.Point], reps: int, log) -> dict[str, dict[str, Any]]:
    """Every runnable point on every clip, `reps` interleaved rounds; quality and FLOPs from the first round, against
    the uncached output under the row's contract."""
    runnable = [p for p in points if not p.unavailable]
    sessions = Sessions(session)
    steps_sessions: dict[int, LoadedWorkload] = {}
    results: dict[str, dict[str, Any]] = {p.key: {"seconds": [], "clips": {}} for p in runnable}
    references: dict[tuple[str, str], Any] = {}
    baseline_drift = [0.0]
    for rep in range(reps):
        for point in runnable:
            total = 0.0
            mine = sessions.of(point)
            for clip in session.clips:
                record = _generate(point, mine, clip, steps_sessions, decode=rep == 0)
                generation = record["generation"]
                total += generation.denoise_seconds
                key = (mine.workload.contract, clip.name)
                if rep > 0:
                    if point.kind == "uncached":  # the baseline must not drift: no row may leave state behind
                        drift = latent_rel_l2(references[key].latents, generation.latents)
                        baseline_drift[0] = max(baseline_drift[0], drift)
                    continue
                if point.kind == "uncached":
                    references[key] = generation
                if key not in references:  # a row under its own contract: its uncached reference, once
                    references[key] = mine.generate(clip)
                ref = references[key]
                quality = clip_quality(ref.frames, generation.frames, clip.mask, ref.latents, generation.latents)
                if point.contract is not None:
                    quality["psnr_vs_source"] = video_psnr(clip.frames, generation.frames)
                    quality["psnr_uncached_vs_source"] = video_psnr(clip.frames, ref.frames)
                stats = record["stats"]
                results[point.key]["clips"][clip.name] = {
                    "flops": record["flops"],
                    "quality": {k: quality[k] for k in (*QUALITY_KEYS, *SOURCE_KEYS) if k in quality},
                    "peak_bytes": record["peak_bytes"],
                    "decisions": stats.get("decisions"),
                    "cache_bytes": stats.get("cache_bytes"),
                }
            results[point.key]["seconds"].append(total)
            log(f"round {rep + 1}/{reps}  {point.key:70s} {total:7.2f} s")
    results[points[0].key]["baseline_drift"] = baseline_drift[0]
    return results


def summarise(points: list[pm.Point], results: dict, checks: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per point: FLOPs fraction, speedups (median and spread over rounds), quality, memory, correctness."""
    base = results[points[0].key]
    base_flops = sum(c["flops"] for c in base["clips"].values())
    base_seconds = base["seconds"]
    rows = []
    for point in points:
        row: dict[str, Any] = {"method": point.method, "setting": point.setting, "kind": point.kind}
        row["contract"] = point.contract
        row["correctness"] = checks.get(point.key) or checks.get(point.method) or {}
        row["notes"] = list(point.notes)
        if point.unavailable:
            row["unavailable"] = point.unavailable
            rows.append(row)
            continue
        result = results[point.key]
        clips = result["clips"]
        flops = sum(c["flops"] for c in clips.values())
        ratios = [b / max(s, 1e-9) for b, s in zip(base_seconds, result["seconds"], strict=True)]
        row.update(
            flops_fraction=flops / base_flops,
            speedup_flops=base_flops / flops,
            speedup_time=statistics.median(base_seconds) / max(statistics.median(result["seconds"]), 1e-9),
            speedup_time_min=min(ratios),
            speedup_time_max=max(ratios),
            denoise_seconds=statistics.median(result["seconds"]),
            quality=mean_quality([c["quality"] for c in clips.values()]),
            quality_per_clip={name: c["quality"] for name, c in clips.items()},
            decisions={name: c["decisions"] for name, c in clips.items() if c["decisions"]},
        )
        peaks = [c["peak_bytes"] for c in clips.values() if c["peak_bytes"] is not None]
        row["peak_memory_bytes"] = max(peaks) if peaks else None
        caches = [c["cache_bytes"] for c in clips.values() if c["cache_bytes"] is not None]
        row["cache_bytes"] = max(caches) if caches else None
        rows.append(row)
    return rows


def correctness(session: LoadedWorkload, points: list[pm.Point], log) -> dict[str, dict]:
    """Replay and branch checks per method (per point for hetcache rows, whose policies differ)."""
    clip = session.clips[0]
    cond, uncond = peers_replay.capture_step_inputs(session, clip, session.workload.steps // 2)
    checks: dict[str, dict] = {}
    for point in points:
        key = point.key if point.kind == "hetcache" else point.method
        if key in checks:
            continue
        checks[key] = peers_replay.check(point, session, cond, uncond).as_dict()
        log(f"check {key:70s} {checks[key]['note']}")
    return checks


def render(path: Path, out: Path, figure_wanted: bool) -> int:
    """Re-write the markdown and the figure from a JSON report (no model runs)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--render file '{path}' cannot be read ({exc}).", "pass a JSON file peers.py wrote.") from exc
    if not isinstance(report, dict) or "rows" not in report:
        raise InputError(f"--render file '{path}' is not a peers report (no rows).", "pass a JSON file peers.py wrote.")
    metrics = parse_contract(report["workload"].get("contract")).headline_metrics
    report["goal"] = json_safe(peers_report.goal_check(report["rows"], metrics))
    peers_report.write(out, report, figure_wanted=figure_wanted)
    print(peers_report.markdown(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out, not args.no_figure)
    warnings.filterwarnings("ignore", category=FutureWarning)
    quiet = args.quiet

    def log(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        session = build_session(args, Path(scratch))
        methods = None
        if args.methods:
            names = [m.strip() for m in args.methods.split(",") if m.strip()]
            unknown = [m for m in names if m not in pm.SHORT_NAMES]
            if unknown:
                raise InputError(
                    f"--methods names unknown rows {', '.join(unknown)}.", f"use {', '.join(pm.SHORT_NAMES)}."
                )
            methods = {pm.SHORT_NAMES[m] for m in names}
        points = pm.build_points(session, tuned_policies(args.tuned), methods)
        if any(p.method == pm.MAGCACHE for p in points):
            ratios = pm.magcache_ratios(session, session.clips[0], args.steps)
            points = pm.with_magcache_ratios(points, ratios, args.steps)
        session.generate(session.clips[0], decode=False)  # warm-up
        checks = correctness(session, points, log)
        results = measure(session, points, args.reps, log)
    rows = summarise(points, results, checks)
    context = {
        **harness.provenance("peers.py", argv, args.device),
        "size": args.size,
        "weights": args.weights,
        "reps": args.reps,
        "workload": session.workload.to_dict(),
        "tokens": ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16),
        "flops_method": peers_report.FLOPS_METHOD,
        "baseline_drift": results[points[0].key].get("baseline_drift"),
    }
    goal = peers_report.goal_check(rows, parse_contract(session.workload.contract).headline_metrics)
    report = {**context, "rows": rows, "goal": goal}
    peers_report.write(args.out, json_safe(report), figure_wanted=not args.no_figure)
    print(peers_report.markdown(report))
    return 0


if __name__ == "__main__":
    from hetcache.cli_common import run_cli

    sys.exit(run_cli(main, prog="peers"))
