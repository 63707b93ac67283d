"""Held-out validation at export: the Pareto front scored on clips nobody tuned on, dominated points dropped.

`hetcache-tune export --validate-clips box-7,small_box-7` (and `reference-policies`) loads the study's workload with
those clips in place of its calibration clips (same model, size, steps, seed and editing contract), runs the uncached
reference (`ReferenceStore`) and each front point's exported policy (`Evaluator`, i.e.
`LoadedWorkload.generate_cached` and `hetcache.metrics.clip_quality`), and finds the front points dominated there by
another front point: cheaper-or-equal FLOPs and better-or-equal held-out quality, one of them strictly. Those are
dropped from the export (or, with `--keep-dominated`, flagged); calibration and held-out quality both go into the
policy's provenance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetcache.atomic import json_safe
from hetcache.cli_common import format_table
from hetcache.errors import InputError
from hetcache.fingerprint import model_fingerprint
from hetcache.metrics import METRICS
from hetcache.workloads.spec import ClipSource, Workload, current_workload_dict, parse_clip_names, workload_from_dict

from .budget import Budget
from .export import StudyInfo, policy_of
from .objective import Evaluator
from .references import ReferenceStore, weights_signature
from .results import TrialResult, best_feasible, pareto_front
from .study_storage import file_of


@dataclass(frozen=True)
class HeldOut:
    """One front point scored on the held-out clips."""

    flops_fraction: float
    quality: float  # the budget's first metric, aggregated as the budget says (mean or worst over clips)
    quality_per_clip: dict[str, dict[str, Any]]
    dominated_by: int | None = None


@dataclass
class Validation:
    """The held-out scores of the validated trials (by number) and the clips and contract they were taken on."""

    metric: str
    mode: str
    clips: list[str]
    contract: str
    scores: dict[int, HeldOut] = field(default_factory=dict)

    @property
    def dominated(self) -> set[int]:
        return {n for n, s in self.scores.items() if s.dominated_by is not None}

    def provenance(self, result: TrialResult) -> dict[str, Any]:
        """The calibration and held-out quality of a trial, each with its metric, clips and contract."""
        calibration = result.attrs.get("quality_worst" if self.mode == "worst" else "quality") or {}
        out = {
            "calibration_quality": {
                "metric": self.metric,
                "aggregate": self.mode,
                "value": calibration.get(self.metric),
                "clips": list((result.attrs.get("quality_per_clip") or {}).keys()),
                "contract": self.contract,
                "flops_fraction": result.attrs.get("flops_fraction"),
            }
        }
        score = self.scores.get(result.number)
        if score is not None:
            out["held_out_quality"] = {
                "metric": self.metric,
                "aggregate": self.mode,
                "value": score.quality,
                "clips": self.clips,
                "contract": self.contract,
                "flops_fraction": score.flops_fraction,
                "quality_per_clip": score.quality_per_clip,
                "dominated_by_trial": score.dominated_by,
            }
        return json_safe(out)


def study_workload(info: StudyInfo) -> Workload:
    """The workload a study was tuned on, from its attrs."""
    data = info.attrs.get("workload")
    if not isinstance(data, dict):
        raise InputError(
            f"study '{info.name}' records no workload, so it cannot be validated.", "drop --validate-clips."
        )
    return workload_from_dict(current_workload_dict(data), f"study '{info.name}' workload")


def _identity(source: ClipSource) -> tuple[Any, ...]:
    return (source.kind, source.seed, source.video, source.mask)


def held_out_workload(workload: Workload, text: str, study: str) -> Workload:
    """A study's workload on the `--validate-clips` clips; refuses clips it was tuned on (checked before compute)."""
    sources = parse_clip_names(text, workload, "--validate-clips")
    tuned = {_identity(s): s.name for s in workload.clip_sources()}
    overlap = [s.name for s in sources if _identity(s) in tuned]
    if overlap:
        raise InputError(
            f"--validate-clips {text}: {', '.join(overlap)} are clips study '{study}' was tuned on "
            f"({', '.join(tuned.values())}), so they are not held out.",
            "name clips of other seeds, e.g. --validate-clips box-7,small_box-7.",
        )
    return workload.replace(clips=sources)


def _dominates(a: HeldOut, b: HeldOut, higher: bool) -> bool:
    """a is cheaper-or-equal and better-or-equal than b, one of them strictly."""
    qa, qb = (a.quality, b.quality) if higher else (-a.quality, -b.quality)
    return a.flops_fraction <= b.flops_fraction and qa >= qb and (a.flops_fraction < b.flops_fraction or qa > qb)


@contextlib.contextmanager
def _reference_root(info: StudyInfo) -> Iterator[Path]:
    """Where the held-out references are kept: beside a study file (reused by the next export), else a temp dir."""
    path = file_of(info.storage)
    if path is not None:
        yield path.parent / "references"
        return
    with tempfile.TemporaryDirectory(prefix="hetcache-validate-") as tmp:
        yield Path(tmp)


def validate_front(
    results: list[TrialResult], budget: Budget, info: StudyInfo, workload: Workload, session: Any = None
) -> Validation:
    """Score the front (and the best feasible trial) on `workload`'s clips and mark the dominated points."""
    from hetcache.workloads.execute import LoadedWorkload

    session = session if session is not None else LoadedWorkload(workload)
    model = (info.attrs.get("model") or {}).get("fingerprint")
    if model not in (None, model_fingerprint(session.transformer)["fingerprint"]) or info.attrs.get("weights") not in (
        None,
        weights_signature(session.transformer),
    ):
        raise InputError(
            f"study '{info.name}' was tuned on another model or other weights than its workload loads here.",
            "validate on the machine (and weights) the study was tuned with.",
        )
    validation = Validation(budget.primary, budget.mode, [c.name for c in session.clips], session.workload.contract)
    points = {r.number: r for r in pareto_front(results, budget)}
    best = best_feasible(results, budget)
    if best is not None:
        points.setdefault(best.number, best)
    with _reference_root(info) as root:
        evaluator = Evaluator(session, ReferenceStore(root, session), budget, info.objective)
        for number, result in sorted(points.items()):
            outcome = evaluator.evaluate(policy_of(result, info, budget), prune=False)
            quality = budget.aggregate(outcome.quality, outcome.quality_worst).get(budget.primary, float("nan"))
            validation.scores[number] = HeldOut(outcome.flops_fraction, float(quality), outcome.quality_per_clip)
    higher = METRICS[budget.primary]
    for number, score in list(validation.scores.items()):
        rivals = [n for n, other in validation.scores.items() if n != number and _dominates(other, score, higher)]
        if rivals:
            winner = min(rivals, key=lambda n: (validation.scores[n].flops_fraction, n))
            validation.scores[number] = dataclasses.replace(score, dominated_by=winner)
    return validation


def validation_rows(results: list[TrialResult], validation: Validation, keep: bool) -> list[dict[str, Any]]:
    """The export summary's table: calibration and held-out FLOPs and quality of each validated point."""
    by_number = {r.number: r for r in results}
    rows = []
    for number, score in sorted(validation.scores.items(), key=lambda item: item[1].flops_fraction):
        result = by_number[number]
        calibration = validation.provenance(result)["calibration_quality"]
        verdict = "kept"
        if score.dominated_by is not None:
            verdict = f"{'flagged' if keep else 'dropped'}: dominated by trial {score.dominated_by}"
        rows.append(
            {
                "trial": number,
                "FLOPs (calib)": calibration["flops_fraction"],
                f"{validation.metric} (calib)": calibration["value"],
                "FLOPs (held-out)": score.flops_fraction,
                f"{validation.metric} (held-out)": score.quality,
                "export": verdict,
            }
        )
    return rows


def validation_report(results: list[TrialResult], validation: Validation, keep: bool) -> str:
    """The table `hetcache-tune export --validate-clips` prints, headed by the clips and the editing contract."""
    head = (
        f"held-out validation on {', '.join(validation.clips)} (editing contract {validation.contract}, "
        f"{validation.metric} {validation.mode} over clips, against the uncached run of each clip):"
    )
    return head + "\n" + format_table(validation_rows(results, validation, keep))
