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


@dataclass(frozen=True)
class ProfileHints:
    """Block orders (least context drift first), the step-curve polynomial and the least drifting layers."""

    path: str
    model_fingerprint: str | None
    main_order: tuple[int, ...]
    vace_order: tuple[int, ...]
    polynomial: tuple[float, ...] | None
    least_drifting: tuple[str, ...]


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
    )
