"""What the tuner takes from a profile folder (docs/files.md, "profile.json"): layer drift and the step curve.

The file is read by the profiler's own reader (`hetcache.profiler.store.read_profile_data`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetcache.profiler.store import JSON_FILE, read_profile_data

from hetcache.errors import InputError
from hetcache.workloads.spec import Workload, current_workload_dict, workload_from_dict

# workload fields a profile's hints follow: a profile made with other ones is refused (layer drift and the step curve
# depend on the model, its weights, the steps and their schedule, the clip size and the editing contract) ...
PROFILE_MUST_MATCH = ("pipeline", "weights", "steps", "shift", "size", "contract")
# ... and fields that shade them only a little (a warning); the clips, device and name do not matter
PROFILE_MAY_DIFFER = ("guidance_scale", "dtype", "seed", "mask_threshold", "fit", "prompt_embeds")


@dataclass(frozen=True)
class ProfileHints:
    """Block orders (least context drift first), the step-curve polynomial and the least drifting layers."""

    path: str
    model_fingerprint: str | None
    main_order: tuple[int, ...]
    vace_order: tuple[int, ...]
    polynomial: tuple[float, ...] | None
    least_drifting: tuple[str, ...]
    workload: dict[str, Any] | None = None  # the workload it was made with (hetcache.workload/v1), if recorded


def _context_drift(layer: dict[str, Any]) -> float:
    value = (layer.get("drift") or {}).get("context")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def read_profile(folder: str | Path) -> ProfileHints:
    """Read the parts of a profile the search space uses; a missing or malformed file is an InputError."""
    data = read_profile_data(folder)
    path = Path(folder) / JSON_FILE
    layers = data["layers"]
    if not layers:
        raise InputError(f"profile '{path}' has no layers.", "re-run hetcache-profile.")
    try:
        main = [layer for layer in layers if layer["kind"] == "main"]
        vace = [layer for layer in layers if layer["kind"] == "vace"]
        main_order = tuple(int(la["index"]) for la in sorted(main, key=lambda la: (_context_drift(la), la["index"])))
        vace_order = tuple(int(la["index"]) for la in sorted(vace, key=lambda la: (_context_drift(la), la["index"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"profile '{path}': layers[*] lack kind/index ({exc}).", "re-run hetcache-profile.") from exc
    poly = (data.get("step_curve") or {}).get("polynomial")
    polynomial = None
    if isinstance(poly, list) and poly and all(isinstance(c, (int, float)) and math.isfinite(c) for c in poly):
        polynomial = tuple(float(c) for c in poly)
    headroom = data.get("headroom") or {}
    least = tuple(str(n) for n in headroom.get("least_drifting_layers") or [])
    return ProfileHints(
        path=str(Path(folder)),
        model_fingerprint=(data.get("model") or {}).get("fingerprint"),
        main_order=main_order,
        vace_order=vace_order,
        polynomial=polynomial,
        least_drifting=least,
        workload=data.get("workload") if isinstance(data.get("workload"), dict) else None,
    )


def _field(workload: Workload, name: str) -> Any:
    if name == "size":  # as run: the reference size where unset, on synthetic clips
        size = workload.synthetic_size() if workload.uses_synthetic_clips() else None
        frames, height, width = size or (workload.num_frames, workload.height, workload.width)
        return f"{width}x{height}x{frames}"
    return getattr(workload, name)


def check_profile_workload(hints: ProfileHints, workload: Workload) -> str | None:
    """Refuse a profile made on another workload than the study's (PROFILE_MUST_MATCH, each differing field named);
    return a warning naming the harmless fields that differ (PROFILE_MAY_DIFFER), None when none does. A profile
    that records no workload (an older one) passes."""
    if hints.workload is None:
        return None
    source = Path(hints.path) / JSON_FILE
    try:
        made = workload_from_dict(current_workload_dict(hints.workload), f"profile '{source}' workload")
    except InputError as exc:
        raise InputError(exc.what, "re-run hetcache-profile with this version, or drop --profile.") from None

    def differ(names: tuple[str, ...]) -> str:
        shown = (f"{n} {_field(made, n)!r} (this study {_field(workload, n)!r})" for n in names)
        return "; ".join(text for n, text in zip(names, shown, strict=True) if _field(made, n) != _field(workload, n))

    wrong = differ(PROFILE_MUST_MATCH)
    if wrong:
        raise InputError(
            f"profile '{hints.path}' was made on another workload: {wrong}.",
            "profile this workload (hetcache-profile with the study's workload flags), or drop --profile.",
        )
    shaded = differ(PROFILE_MAY_DIFFER)
    if not shaded:
        return None
    return f"profile '{hints.path}' was made with {shaded}; its layer order and step curve are used as they are."
