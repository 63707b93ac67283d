"""Quality budgets (`--budget psnr=30` / `psnr_mask=28,ssim=0.95`): parsing, constraint values, feasibility.

A budget holds one bound per metric of `hetcache.metrics.METRICS`; a higher-is-better metric must reach its bound,
a lower-is-better one must stay at or below it. It is met on the mean over the calibration clips, or with `--worst`
on every clip. It may also bound the device memory hetcache holds for a policy (`--max-cache-gib`, a MemoryBound).
Constraint values follow Optuna's convention: feasible when every value is ≤ 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hetcache.errors import InputError
from hetcache.metrics import METRICS, PSNR_CAP

MIN_SPEEDUP_KEY = "min_speedup"
MAX_CACHE_KEY = "max_cache_gib"  # constraint name and study attr of the memory bound
MEMORY_AT_KEY = "memory_at"


def best_possible(metric: str) -> float:
    """The best value a metric can take (PSNR is capped at PSNR_CAP for identical outputs)."""
    if metric.startswith("psnr"):
        return PSNR_CAP
    if metric.startswith("ssim"):
        return 1.0
    return 0.0


def _number(value: Any) -> float | None:
    """A finite float, or None for NaN, missing or non-numeric values ('unavailable')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class MemoryBound:
    """At most `max_gib` GiB of device memory held by hetcache (caches, working buffers, offload staging; not the
    weights) for a policy: on the workload's clips, or at `at` = (height, width, frames) with the clips' masks
    scaled to that size. Measured by the memory plan (`hetcache.memory`), before a trial runs."""

    max_gib: float
    at: tuple[int, int, int] | None = None

    def violation(self, cache_gib: Any) -> float:
        """cache_gib − max_gib (≤ 0: fits); an unknown size misses by +inf."""
        number = _number(cache_gib)
        return math.inf if number is None else number - self.max_gib

    def describe(self) -> str:
        """e.g. 'cache ≤ 8 GiB at 720x1280x81' or 'cache ≤ 8 GiB at the workload size'."""
        where = "x".join(map(str, self.at)) if self.at else "the workload size"
        return f"cache ≤ {self.max_gib:g} GiB at {where}"

    def cache_gib(self, policy: Any, session: Any) -> float:
        """Device GiB hetcache holds for `policy` on a workload session (its largest clip), at `at` if set."""
        from hetcache.memory import session_cache_gib

        return session_cache_gib(policy, session, self.at)


@dataclass(frozen=True)
class Budget:
    """Bounds per metric, how they aggregate over clips, and the least speedup worth a policy."""

    bounds: tuple[tuple[str, float], ...]
    mode: str = "mean"
    min_speedup: float = 1.1
    memory: MemoryBound | None = None

    @property
    def metrics(self) -> list[str]:
        return [name for name, _ in self.bounds]

    @property
    def primary(self) -> str:
        """The metric of the first bound (the quality axis of the Pareto ladder)."""
        return self.bounds[0][0]

    def as_dict(self) -> dict[str, float]:
        return dict(self.bounds)

    def describe(self) -> str:
        """Human-readable, e.g. 'psnr ≥ 30 (mean over clips)'."""
        parts = [f"{m} {'≥' if METRICS[m] else '≤'} {b:g}" for m, b in self.bounds]
        where = "every clip" if self.mode == "worst" else "mean over clips"
        memory = f", {self.memory.describe()}" if self.memory is not None else ""
        return f"{', '.join(parts)} ({where}){memory}"

    def slug(self) -> str:
        """A file-name-safe name, e.g. 'psnr30' or 'psnr_mask28-ssim0.95-worst'."""
        text = "-".join(f"{m}{b:g}" for m, b in self.bounds)
        return text + ("-worst" if self.mode == "worst" else "")

    def violation(self, metric: str, value: Any) -> float:
        """How far `value` misses the bound of `metric` (≤ 0: met); a missing or NaN value misses by +inf."""
        bound = dict(self.bounds)[metric]
        number = _number(value)
        if number is None:
            return math.inf
        return bound - number if METRICS[metric] else number - bound

    def constraints(self, aggregate: dict[str, Any], speedup: float, cache_gib: Any = None) -> dict[str, float]:
        """Constraint values (feasible: all ≤ 0) for an aggregate quality dict, the trial's speedup and (with a
        memory bound) the device GiB of its policy."""
        out = {metric: self.violation(metric, aggregate.get(metric)) for metric in self.metrics}
        out[MIN_SPEEDUP_KEY] = self.min_speedup - speedup
        if self.memory is not None:
            out[MAX_CACHE_KEY] = self.memory.violation(cache_gib)
        return out

    def aggregate(self, quality: dict[str, Any], quality_worst: dict[str, Any]) -> dict[str, Any]:
        """The quality dict this budget is judged on (mean or worst over clips)."""
        return quality_worst if self.mode == "worst" else quality

    def feasible(self, aggregate: dict[str, Any], speedup: float, cache_gib: Any = None) -> bool:
        return all(v <= 0 for v in self.constraints(aggregate, speedup, cache_gib).values())

    def distance(self, aggregate: dict[str, Any], speedup: float, cache_gib: Any = None) -> float:
        """Total relative miss over all bounds (0 when feasible); ranks infeasible trials by closeness."""
        total = 0.0
        for metric, bound in self.bounds:
            miss = max(0.0, self.violation(metric, aggregate.get(metric)))
            total += miss / (abs(bound) if bound else 1.0)
        total += max(0.0, self.min_speedup - speedup) / self.min_speedup
        if self.memory is not None:
            total += max(0.0, self.memory.violation(cache_gib)) / self.memory.max_gib
        return total

    def hopeless(self, per_clip: list[dict[str, Any]], remaining: int) -> dict[str, float] | None:
        """Constraint values if the clips seen so far prove the budget cannot be met, else None.

        Worst mode: any clip misses a bound. Mean mode: even if every one of the `remaining` clips reached the
        metric's best possible value, the mean would still miss. The values returned are the smallest possible
        misses (a lower bound), so they rank pruned trials fairly.
        """
        proven: dict[str, float] = {}
        for metric, _bound in self.bounds:
            values = [_number(q.get(metric)) for q in per_clip]
            seen = [v for v in values if v is not None]
            if self.mode == "worst":
                misses = [self.violation(metric, v) for v in seen]
                if misses and max(misses) > 0:
                    proven[metric] = max(misses)
            else:
                optimistic = (sum(seen) + remaining * best_possible(metric)) / max(1, len(seen) + remaining)
                if (seen or remaining) and self.violation(metric, optimistic) > 0:
                    proven[metric] = self.violation(metric, optimistic)
        if not proven:
            return None
        return {metric: proven.get(metric, 0.0) for metric in self.metrics}

    def to_attrs(self) -> dict[str, Any]:
        """The study user attrs of this budget (the memory bound's only when there is one)."""
        attrs = {"budget": self.as_dict(), "budget_mode": self.mode, "min_speedup": self.min_speedup}
        if self.memory is not None:
            attrs[MAX_CACHE_KEY] = self.memory.max_gib
            attrs[MEMORY_AT_KEY] = list(self.memory.at) if self.memory.at else None
        return attrs


def _number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_budget(
    text: str | None, worst: bool = False, min_speedup: float = 1.1, default_metric: str = "psnr"
) -> Budget:
    """Parse 'metric=value[,metric=value…]' into a Budget; every mistake is a clear InputError.

    A bare value bounds `default_metric`: the editing contract's budget metric (hetcache.contracts: `psnr` for the
    raw output, `psnr_mask` once the source is pasted or blended back, where whole-frame PSNR measures the mask's
    area)."""
    known = ", ".join(METRICS)
    example = "e.g. --budget psnr=30 or --budget psnr_mask=28,ssim=0.95"
    if text is None or not text.strip():
        raise InputError("--budget is empty.", f"give at least one bound, {example} (metrics: {known}).")
    bounds: dict[str, float] = {}
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise InputError(f"--budget '{text}' has an empty bound (a stray comma).", f"remove it; {example}.")
        if "=" not in item and _number_text(item):
            item = f"{default_metric}={item}"
        if "=" not in item:
            raise InputError(f"--budget bound '{item}' has no '='.", f"write metric=value, {example}.")
        name, _, raw = (s.strip() for s in item.partition("="))
        if name not in METRICS:
            raise InputError(f"--budget names unknown metric '{name}'.", f"use one of: {known}.")
        try:
            value = float(raw)
        except ValueError:
            raise InputError(
                f"--budget bound '{item}': '{raw}' is not a number.", f"give a number after '=', {example}."
            ) from None
        if not math.isfinite(value):
            raise InputError(f"--budget bound '{item}' is not finite.", "give a finite number.")
        if name in bounds:
            raise InputError(f"--budget bounds metric '{name}' twice.", "give each metric once.")
        bounds[name] = value
    if not math.isfinite(min_speedup) or min_speedup <= 0:
        raise InputError(f"--min-speedup {min_speedup} must be a positive number.", "e.g. --min-speedup 1.1.")
    return Budget(tuple(bounds.items()), "worst" if worst else "mean", float(min_speedup))


def budget_from_attrs(attrs: dict[str, Any]) -> Budget:
    """The budget a study was tuned under (its user attrs, docs/files.md)."""
    bounds = attrs.get("budget")
    if not isinstance(bounds, dict) or not bounds:
        raise InputError("the study records no budget (was it created by hetcache-tune?).", "pass --budget.")
    memory = None
    if attrs.get(MAX_CACHE_KEY) is not None:
        at = attrs.get(MEMORY_AT_KEY)
        memory = MemoryBound(float(attrs[MAX_CACHE_KEY]), tuple(int(v) for v in at) if at else None)
    return Budget(
        tuple((str(k), float(v)) for k, v in bounds.items()),
        attrs.get("budget_mode", "mean"),
        float(attrs.get("min_speedup", 1.0)),
        memory,
    )
