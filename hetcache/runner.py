"""The run command: a workload's clips through the pipeline, uncached and/or with a policy, with the comparison.

Writes into one folder (atomically): the edited clips (`<clip>.mp4`, `<clip>.uncached.mp4`), the inputs and masks
(`inputs/`), and `run.json` with timings, engine stats and quality per clip and region.
"""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .atomic import atomic_dir, write_json
from .engine import apply_hetcache, remove_hetcache
from .metrics import clip_quality, mean_quality
from .policy import Policy, load_policy
from .video import write_mask, write_video
from .workloads.execute import Generation, Session
from .workloads.spec import Workload

RUN_FILE = "run.json"
RUN_SCHEMA = "hetcache.run/v1"


@dataclass
class ClipResult:
    """Everything measured for one clip."""

    name: str
    notes: list[str]
    uncached: Generation | None = None
    cached: Generation | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {"clip": self.name, "notes": self.notes}
        if self.uncached is not None:
            row["uncached_denoise_s"] = self.uncached.denoise_seconds
            row["uncached_total_s"] = self.uncached.total_seconds
        if self.cached is not None:
            row["cached_denoise_s"] = self.cached.denoise_seconds
            row["cached_total_s"] = self.cached.total_seconds
            row["stats"] = self.stats
        if self.uncached is not None and self.cached is not None:
            row["speedup_time"] = self.uncached.denoise_seconds / max(self.cached.denoise_seconds, 1e-9)
            row["speedup_flops"] = self.stats["flops_uncached"] / max(self.stats["flops"], 1.0)
            row["quality"] = self.quality
        return row


def run_clips(
    session: Session,
    policy: Policy | None,
    compare: bool,
    strict: bool = True,
    progress: bool = False,
    lpips=None,
) -> list[ClipResult]:
    """Generate every clip of the session uncached (when needed) and with the policy (when given)."""
    results = []
    for clip in tqdm(session.clips, desc="clips", disable=not progress, file=sys.stderr):
        result = ClipResult(name=clip.name, notes=list(clip.notes))
        if policy is None or compare:
            result.uncached = session.generate(clip)
        if policy is not None:
            handle = apply_hetcache(session.pipe, policy, strict=strict)
            try:
                result.cached = session.generate(clip)
                result.stats = handle.stats()
            finally:
                remove_hetcache(session.pipe)
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
    return results


def summarise(results: list[ClipResult]) -> dict[str, Any]:
    """Speedups (FLOPs and denoising wall-clock, summed over clips) and mean quality."""
    out: dict[str, Any] = {"clips": len(results)}
    uncached = [r.uncached for r in results if r.uncached is not None]
    cached = [r.cached for r in results if r.cached is not None]
    if uncached:
        out["uncached_denoise_s"] = sum(g.denoise_seconds for g in uncached)
    if cached:
        out["cached_denoise_s"] = sum(g.denoise_seconds for g in cached)
        flops = sum(r.stats["flops"] for r in results if r.cached is not None)
        uncached_flops = sum(r.stats["flops_uncached"] for r in results if r.cached is not None)
        out["flops_fraction"] = flops / uncached_flops
        out["speedup_flops"] = uncached_flops / flops
        overhead = sum(r.stats["phase_seconds"]["engine"] for r in results if r.cached is not None)
        out["engine_overhead_fraction"] = overhead / max(out["cached_denoise_s"], 1e-9)
    if uncached and cached:
        out["speedup_time"] = out["uncached_denoise_s"] / max(out["cached_denoise_s"], 1e-9)
        out["quality"] = mean_quality([r.quality for r in results if r.quality])
    return out


def write_run(
    out: Path,
    session: Session,
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
        "summary": summarise(results),
        "clips": [r.summary() for r in results],
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
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
    progress: bool = False,
    lpips=None,
) -> dict[str, Any]:
    """Run a workload (optionally with a policy and the uncached comparison) and write its outputs."""
    loaded = load_policy(policy) if policy is not None else None
    session = Session(workload)
    results = run_clips(session, loaded, compare, strict, progress, lpips)
    if out is None:
        return {"summary": summarise(results), "clips": [r.summary() for r in results]}
    return write_run(out, session, results, loaded, overwrite)
