"""The run command: a workload's clips through the pipeline, uncached and/or with a policy, with the comparison.

Writes into one folder (atomically): the edited clips (`<clip>.mp4`, `<clip>.uncached.mp4`), the inputs and masks
(`inputs/`), and `run.json` (hetcache.run_record) with timings, engine stats and quality per clip and region.
With the comparison, the runs that produce the outputs are the warm-up; the wall-clock speedup comes from `reps`
interleaved timing rounds after them (hetcache.timing).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, timing
from .atomic import atomic_dir, write_json
from .contracts import RAW, Contract
from .metrics import clip_quality, mean_quality
from .policy import Policy, load_policy
from .run_record import RUN_FILE, RUN_SCHEMA
from .video import write_mask, write_video
from .workloads.execute import Generation, LoadedWorkload
from .workloads.spec import Workload

# before_run(clip name, "uncached" | "cached", round): round 0 is the warm-up run that produces the output
BeforeRun = Callable[[str, str, int], None]


@dataclass
class ClipResult:
    """Everything measured for one clip."""

    name: str
    notes: list[str]
    uncached: Generation | None = None
    cached: Generation | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    rounds: timing.Rounds = field(default_factory=timing.Rounds)

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {"clip": self.name, "notes": self.notes}
        timed = len(self.rounds) > 0
        if self.uncached is not None:
            row["uncached_denoise_s"] = (
                timing.describe(self.rounds.uncached)["median"] if timed else self.uncached.denoise_seconds
            )
            row["uncached_total_s"] = self.uncached.total_seconds
        if self.cached is not None:
            row["cached_denoise_s"] = (
                timing.describe(self.rounds.cached)["median"] if timed else self.cached.denoise_seconds
            )
            row["cached_total_s"] = self.cached.total_seconds
            row["stats"] = self.stats
        if self.uncached is not None and self.cached is not None:
            row["speedup_flops"] = self.stats["flops_uncached"] / max(self.stats["flops"], 1.0)
            row["quality"] = self.quality
        if timed:
            row["timing"] = {
                **self.rounds.summary(),
                "warmup_denoise_s": {"uncached": self.uncached.denoise_seconds, "cached": self.cached.denoise_seconds},
            }
            speedup = row["timing"]["speedup_time"]
            row.update(speedup_time=speedup["median"], speedup_time_min=speedup["min"], speedup_time_max=speedup["max"])
        return row


def run_clips(
    session: LoadedWorkload,
    policy: Policy | None,
    compare: bool,
    strict: bool = True,
    lpips=None,
    reps: int = timing.DEFAULT_REPS,
    before_run: BeforeRun | None = None,
) -> list[ClipResult]:
    """Generate every clip uncached (when needed) and with the policy (when given); with both, time `reps` rounds.

    The generations that produce the outputs run first and warm the process up; then each round runs every clip
    uncached and cached back to back (decoding skipped), in alternating order.
    """
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    notify = before_run or (lambda clip, kind, round_: None)
    results = []
    for clip in session.clips:
        result = ClipResult(name=clip.name, notes=list(clip.notes))
        if policy is None or compare:
            notify(clip.name, "uncached", 0)
            result.uncached = session.generate(clip)
        if policy is not None:
            notify(clip.name, "cached", 0)
            result.cached, result.stats = session.generate_cached(clip, policy, strict=strict)
        if result.uncached is not None and result.cached is not None:
            result.quality = clip_quality(
                result.uncached.frames,
                result.cached.frames,
                clip.mask,
                result.uncached.latents,
                result.cached.latents,
                lpips,
            )
        results.append(result)
    if policy is None or not compare:
        return results
    for round_ in range(1, reps + 1):
        for clip, result in zip(session.clips, results, strict=True):
            kinds = ("uncached", "cached") if round_ % 2 else ("cached", "uncached")
            for kind in kinds:
                notify(clip.name, kind, round_)
                if kind == "uncached":
                    result.rounds.uncached.append(session.generate(clip, decode=False).denoise_seconds)
                else:
                    generation, _ = session.generate_cached(clip, policy, strict=strict, decode=False)
                    result.rounds.cached.append(generation.denoise_seconds)
    return results


def summarise(results: list[ClipResult], contract: Contract = RAW) -> dict[str, Any]:
    """Speedups (FLOPs; wall-clock as the median over rounds of the clips' summed seconds), mean quality, warnings;
    the editing contract every run followed and the quality metrics that lead under it."""
    out: dict[str, Any] = {"clips": len(results), "contract": contract.name}
    out["headline_metrics"] = list(contract.headline_metrics)
    uncached = [r.uncached for r in results if r.uncached is not None]
    cached = [r for r in results if r.cached is not None]
    if uncached and not cached:
        out["uncached_denoise_s"] = sum(g.denoise_seconds for g in uncached)
    if cached:
        flops = sum(r.stats["flops"] for r in cached)
        uncached_flops = sum(r.stats["flops_uncached"] for r in cached)
        out["flops_fraction"] = flops / uncached_flops
        out["speedup_flops"] = uncached_flops / flops
        overhead = sum(r.stats["phase_seconds"]["engine"] for r in cached)
        out["engine_overhead_fraction"] = overhead / max(sum(r.cached.denoise_seconds for r in cached), 1e-9)
        if not uncached:
            out["cached_denoise_s"] = sum(r.cached.denoise_seconds for r in cached)
    if uncached and cached:
        rounds = timing.combine([r.rounds for r in results])
        out["timing"] = rounds.summary()
        out["uncached_denoise_s"] = out["timing"]["uncached_denoise_s"]["median"]
        out["cached_denoise_s"] = out["timing"]["cached_denoise_s"]["median"]
        speedup = out["timing"]["speedup_time"]
        out.update(speedup_time=speedup["median"], speedup_time_min=speedup["min"], speedup_time_max=speedup["max"])
        out["warnings"] = timing.warnings_for(rounds, out["speedup_flops"], out["engine_overhead_fraction"])
        out["headline"] = "flops" if out["warnings"] else "time"
        out["quality"] = mean_quality([r.quality for r in results if r.quality])
    return out


def write_run(
    out: Path,
    session: LoadedWorkload,
    results: list[ClipResult],
    policy: Policy | None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write clips, inputs and run.json into `out`, atomically; returns the run record."""
    workload = session.workload
    record = {
        "schema": RUN_SCHEMA,
        "tool": f"hetcache {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "workload": workload.to_dict(),
        "policy": policy.to_dict() if policy is not None else None,
        "summary": summarise(results, session.contract),
        "clips": [r.summary() for r in results],
    }
    with atomic_dir(out, "run", overwrite=overwrite) as tmp:
        for clip, result in zip(session.clips, results, strict=True):
            fps = clip.fps
            write_video(tmp / "inputs" / f"{clip.name}.mp4", clip.frames, fps)
            write_mask(tmp / "inputs" / f"{clip.name}.mask.mp4", clip.mask, fps)
            if result.cached is not None:
                write_video(tmp / f"{clip.name}.mp4", result.cached.frames, fps)
            if result.uncached is not None:
                name = f"{clip.name}.uncached.mp4" if result.cached is not None else f"{clip.name}.mp4"
                write_video(tmp / name, result.uncached.frames, fps)
        write_json(tmp / RUN_FILE, record)
    return record


def run(
    workload: Workload,
    policy: str | Policy | None = None,
    compare: bool = False,
    out: Path | None = None,
    strict: bool = True,
    overwrite: bool = False,
    lpips=None,
    reps: int = timing.DEFAULT_REPS,
    before_run: BeforeRun | None = None,
) -> dict[str, Any]:
    """Run a workload (optionally with a policy and the uncached comparison, timed over `reps` rounds) and write its
    outputs; `before_run` is called before every pipeline run (progress reporting)."""
    loaded = load_policy(policy) if policy is not None else None
    session = LoadedWorkload(workload)
    results = run_clips(session, loaded, compare, strict, lpips, reps, before_run)
    if out is None:
        return {"summary": summarise(results, session.contract), "clips": [r.summary() for r in results]}
    return write_run(out, session, results, loaded, overwrite)
