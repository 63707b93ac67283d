"""Producing the shipped tuned policies: tune the reference workload once per budget, write policies/reference-*.json.

`hetcache-tune reference-policies --budget psnr=30 --budget psnr=35 --trials 60 --policies-dir policies` runs one
study per budget (names `reference-<budget>`, all in one study file in the run folder, references shared) and exports
each best feasible policy under the name `reference-<budget>` (`reference-<contract>-<budget>` under a contract other
than none, e.g. `reference-paste-psnr_mask35`), with the tool's provenance.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hetcache.contracts import RAW, Contract
from hetcache.workloads.spec import Workload

from .budget import Budget
from .export import NoFeasibleTrial, export_best
from .references import FOLDER as REFERENCE_FOLDER
from .study import TuneConfig, tune


def reference_policy_name(budget: Budget, contract: Contract = RAW) -> str:
    """'reference-psnr30' for psnr=30, 'reference-paste-psnr_mask35' under contract paste (the file is
    policies/<name>.json)."""
    middle = "" if contract.is_none else f"{contract.slug}-"
    return f"reference-{middle}{budget.slug()}"


def tune_reference_policies(
    budgets: list[Budget],
    config: TuneConfig,
    policies_dir: Path,
    held_out: Workload | None = None,
    keep_dominated: bool = False,
) -> list[Path]:
    """Tune `config.workload` under each budget (resuming earlier studies) and write one policy file per budget;
    with `held_out` (the workload on --validate-clips), the front is validated there first (`tuner/validate.py`) and
    a point dominated there is not shipped (unless `keep_dominated`)."""
    from hetcache.workloads.execute import LoadedWorkload

    from .validate import validate_front, validation_report

    session = LoadedWorkload(config.workload)
    held_session = LoadedWorkload(held_out, session.pipe) if held_out is not None else None
    written = []
    for budget in budgets:
        name = reference_policy_name(budget, config.workload.editing_contract)
        run = dataclasses.replace(
            config,
            budget=budget,
            study_name=name,
            storage=config.storage or str(config.out / "study.db"),
            out=config.out / name,
            reference_dir=config.reference_dir or config.out / REFERENCE_FOLDER,
            resume=True,
        )
        result = tune(run, session)
        clips = ", ".join(clip.name for clip in session.clips)
        size = session.summary()
        description = (
            f"Tuned by hetcache-tune for the {config.workload.name} workload ({size['steps']} steps, "
            f"{size['height']}x{size['width']}x{size['num_frames']}, clips {clips}, editing contract "
            f"{config.workload.contract}) under {budget.describe()}."
        )
        results, extra = result.results, None
        if held_session is not None:
            validation = validate_front(results, budget, result.info, held_out, held_session)
            print(validation_report(results, validation, keep_dominated))
            dropped = set() if keep_dominated else validation.dominated
            results, extra = [r for r in results if r.number not in dropped], validation.provenance
        try:
            _, path = export_best(
                results,
                budget,
                result.info,
                policies_dir / f"{name}.json",
                name=name,
                description=description,
                extra=extra,
            )
        except NoFeasibleTrial as exc:
            print(f"hetcache-tune: {exc}", file=sys.stderr)
            continue
        written.append(path)
    return written
