"""Wall-clock speedups a user can trust: interleaved uncached/cached rounds, medians with min–max, warnings.

A single timed run per side tells little on a shared machine (one busy moment halves a speedup). The run command
times `reps` rounds after the warm-up runs that produce the outputs; each round runs the uncached and the cached
pipeline back to back, in alternating order, so drift and bursts of load hit both sides. The speedup is the median
of the per-round ratios, reported with their min–max; a large spread, or a time speedup the FLOPs speedup cannot
explain, is flagged, and the FLOPs figure stays the headline.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REPS = 3  # rounds after the warm-up: the least that gives a median with a min–max
SPREAD_LIMIT = 0.2  # (max − min) / median of the per-round speedups above which the figure is flagged
BAND_SLACK = 0.05  # tolerance around the plausible band [1, FLOPs speedup] of the time speedup


def spread(values: list[float]) -> float:
    """(max − min) / median: 0 for identical rounds."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else float("inf")


def describe(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


@dataclass
class Rounds:
    """Denoising seconds of each timed round, uncached and cached (same length, paired by round)."""

    uncached: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return min(len(self.uncached), len(self.cached))

    def ratios(self) -> list[float]:
        """Per-round speedups, uncached / cached seconds."""
        return [u / max(c, 1e-9) for u, c in zip(self.uncached, self.cached, strict=True)]

    def summary(self) -> dict[str, Any]:
        """The record run.json keeps: seconds and speedup per round with median and min–max."""
        return {
            "rounds": len(self),
            "order": "interleaved after a warm-up: uncached then cached in even rounds, cached first in odd ones",
            "uncached_denoise_s": describe(self.uncached),
            "cached_denoise_s": describe(self.cached),
            "speedup_time": describe(self.ratios()),
        }


def combine(rounds: list[Rounds]) -> Rounds:
    """The rounds of several clips as one: round r's seconds summed over clips."""
    return Rounds(
        uncached=[sum(values) for values in zip(*(r.uncached for r in rounds), strict=True)],
        cached=[sum(values) for values in zip(*(r.cached for r in rounds), strict=True)],
    )


def warnings_for(rounds: Rounds, speedup_flops: float, engine_overhead: float | None = None) -> list[str]:
    """Why the wall-clock speedup should not be trusted (empty when it can be).

    Flagged: a spread over rounds above SPREAD_LIMIT, and a time speedup whose whole min–max lies outside the band
    the FLOPs speedup explains, [1, FLOPs speedup] (caching cannot save more time than compute; it should not cost
    time when it saves compute).
    """
    ratios = rounds.ratios()
    low, high, middle = min(ratios), max(ratios), statistics.median(ratios)
    shown = f"{middle:.2f}x (min–max {low:.2f}–{high:.2f}x over {len(ratios)} rounds)"
    out = []
    if len(ratios) > 1 and spread(ratios) > SPREAD_LIMIT:
        out.append(
            f"the wall-clock speedup varied by {spread(ratios):.0%} between rounds, {shown}: the machine was busy, "
            f"so trust the FLOPs speedup ({speedup_flops:.2f}x) and re-run with more --reps on an idle machine."
        )
    band_low, band_high = sorted((1.0, speedup_flops))
    if high < band_low * (1 - BAND_SLACK) or low > band_high * (1 + BAND_SLACK):
        overhead = f"; engine overhead was {engine_overhead:.0%} of the cached time" if engine_overhead else ""
        out.append(
            f"the wall-clock speedup {shown} disagrees with the FLOPs speedup ({speedup_flops:.2f}x) by more than "
            f"its spread explains{overhead}: trust the FLOPs figure, and time again on an idle machine with more "
            "--reps."
        )
    return out
