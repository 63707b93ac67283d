"""Workloads: everything a run depends on — model, pipeline, calibration clips, size, steps, guidance, seed.

Every command takes one, as a JSON file (`hetcache.workload/v1`) or as flags. The default is the embedded
reference workload: the trained tiny Wan-VACE pipeline on the five synthetic calibration clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import cli_types
from ..contracts import Contract, parse_contract
from ..errors import InputError
from .clips import CLIP_KINDS, MASK_KINDS

SCHEMA = "hetcache.workload/v1"
DTYPES = ("float32", "bfloat16", "float16")
REFERENCE_SIZE = (17, 256, 256)  # frames, height, width of the reference calibration clips
OPTIONAL_SIZES = ("height", "width", "num_frames")  # unset (null): the clips' own size, or REFERENCE_SIZE


@dataclass(frozen=True)
class ClipSource:
    """One calibration clip: synthetic (`kind` + `seed`) or from files (`video` + `mask`)."""

    name: str
    kind: str | None = None
    seed: int = 0
    video: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class Workload:
    """A complete description of what runs: model, pipeline, clips, size, steps, guidance, seed, device."""

    name: str = "reference"
    pipeline: str = "reference"
    weights: str = "trained"
    clips: tuple[ClipSource, ...] = field(default_factory=tuple)
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int = 20
    guidance_scale: float = 5.0
    shift: float | None = None
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    prompt_embeds: str | None = None
    fit: str = "strict"
    mask_threshold: float | None = None
    contract: str = "none"  # the editing contract (hetcache.contracts), canonical spelling

    def __post_init__(self) -> None:
        object.__setattr__(self, "contract", parse_contract(self.contract, "workload contract").name)

    @property
    def is_reference(self) -> bool:
        return self.pipeline == "reference"

    @property
    def editing_contract(self) -> Contract:
        """The parsed editing contract every run of this workload (uncached and cached) follows."""
        return parse_contract(self.contract)

    def synthetic_size(self) -> tuple[int, int, int]:
        """(frames, height, width) of synthetic clips: the given size or the reference 17 x 256 x 256."""
        return (self.num_frames or REFERENCE_SIZE[0], self.height or REFERENCE_SIZE[1], self.width or REFERENCE_SIZE[2])

    def clip_sources(self) -> tuple[ClipSource, ...]:
        """The configured clips, or the reference calibration set (one clip per mask kind)."""
        if self.clips:
            return self.clips
        return tuple(ClipSource(name=kind, kind=kind, seed=101 * i) for i, kind in enumerate(MASK_KINDS))

    def uses_synthetic_clips(self) -> bool:
        return all(source.kind is not None for source in self.clip_sources())

    def replace(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `workload_from_dict` reads back; no `clips` key for the reference calibration clips."""
        data = dataclasses.asdict(self)
        data["clips"] = [{k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in self.clips]
        if not self.clips:
            del data["clips"]  # absent: the default clips (an explicit empty list is refused on reading)
        return {"schema": SCHEMA, **data}

    def summary(self) -> dict[str, Any]:
        """The fields a policy records about the workload it was tuned for."""
        frames, height, width = self.synthetic_size() if self.uses_synthetic_clips() else (None, None, None)
        return {
            "name": self.name,
            "steps": self.steps,
            "height": self.height or height,
            "width": self.width or width,
            "num_frames": self.num_frames or frames,
            "guidance_scale": self.guidance_scale,
            "scheduler": f"{'FlowMatchEulerDiscreteScheduler' if self.is_reference else 'pipeline default'}"
            + (f"(shift={self.shift})" if self.shift is not None else ""),
            "contract": self.contract,
        }


def parse_clip_names(text: str, workload: Workload | None = None, flag: str = "--clips") -> tuple[ClipSource, ...]:
    """Synthetic clips from a comma-separated list: a kind (the workload's clip of that kind, else seed 0) or
    kind-seed for another clip of that kind (e.g. box-7001: one no shipped policy was tuned on)."""
    defaults = {s.kind: s for s in (workload or Workload()).clip_sources() if s.kind}
    sources, unknown = [], []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        kind, _, seed = name.rpartition("-")
        if not seed.isdigit():  # no seed given (kinds contain no "-")
            kind, seed = name, ""
        if kind not in CLIP_KINDS:
            unknown.append(name)
        elif seed:
            sources.append(ClipSource(name=name, kind=kind, seed=int(seed)))
        else:
            sources.append(defaults.get(kind, ClipSource(name=kind, kind=kind)))
    if unknown or not sources:
        raise InputError(
            f"{flag} names unknown clips {', '.join(unknown)}." if unknown else f"{flag} {text!r} names no clip.",
            f"use kinds from {', '.join(CLIP_KINDS)}, optionally with a seed (box-7001).",
        )
    check_unique_clips(sources, flag)
    return tuple(sources)


def check_unique_clips(sources: list[ClipSource] | tuple[ClipSource, ...], origin: str) -> None:
    """Refuse a clip list that names one clip twice (it would run twice into the same output files)."""
    names = [source.name for source in sources]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(
            f"{origin} names clip {', '.join(repr(n) for n in twice)} more than once.",
            "name each clip once (another clip of the same kind: kind-seed, e.g. box-7001).",
        )


def reference_workload(**changes: Any) -> Workload:
    """The embedded reference workload (optionally changed, e.g. `weights="random"`, fewer `steps`)."""
    return Workload(**changes)


def _fail(origin: str, key: str, message: str, fix: str = "correct the workload file.") -> InputError:
    return InputError(f"{origin}: {key} {message}.", fix)


def workload_from_dict(data: dict[str, Any], origin: str = "workload") -> Workload:
    """Validate a JSON-form workload; errors name the field."""
    if not isinstance(data, dict):
        raise _fail(origin, "(top level)", "must be an object")
    if data.get("schema") != SCHEMA:
        raise _fail(origin, "schema", f"must be {SCHEMA!r}, got {data.get('schema')!r}")
    known = {f.name for f in dataclasses.fields(Workload)}
    unknown = sorted(set(data) - known - {"schema"})
    if unknown:
        raise _fail(origin, ", ".join(unknown), "is not a workload field", f"known fields: {', '.join(sorted(known))}.")
    kwargs = {k: v for k, v in data.items() if k in known and k != "clips"}
    for key in ("height", "width", "num_frames", "steps", "seed"):
        if kwargs.get(key) is None and key in OPTIONAL_SIZES:  # null: the reference size (what to_dict writes)
            continue
        if key in kwargs and (not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool) or kwargs[key] < 0):
            raise _fail(origin, key, f"must be a non-negative integer, got {kwargs[key]!r}")
    for key, rule in (("height", cli_types.size), ("width", cli_types.size), ("num_frames", cli_types.frames)):
        if kwargs.get(key) is not None:
            try:
                rule(str(kwargs[key]))
            except argparse.ArgumentTypeError as exc:
                raise _fail(origin, key, str(exc)) from None
    if kwargs.get("steps", 2) < 2:
        raise _fail(origin, "steps", f"must be at least 2, got {kwargs['steps']}")
    for key, low in (("guidance_scale", 0.0), ("shift", 0.0)):
        value = kwargs.get(key)
        if key not in kwargs or (value is None and key == "shift"):  # absent / null shift: the defaults
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise _fail(origin, key, f"must be a finite number ≥ {low:g}, got {value!r}")
    threshold = kwargs.get("mask_threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise _fail(origin, "mask_threshold", f"must be a number in (0, 1), got {threshold!r}")
    if kwargs.get("dtype", "float32") not in DTYPES:
        raise _fail(origin, "dtype", f"must be one of {', '.join(DTYPES)}, got {kwargs['dtype']!r}")
    if kwargs.get("weights", "trained") not in ("trained", "random"):
        raise _fail(origin, "weights", f"must be 'trained' or 'random', got {kwargs['weights']!r}")
    if "contract" in kwargs:
        kwargs["contract"] = parse_contract(kwargs["contract"], f"{origin}: contract").name
    if "clips" in data and not (isinstance(data["clips"], list) and data["clips"]):
        raise _fail(
            origin,
            "clips",
            f"must be a non-empty list of clips, got {data['clips']!r}",
            "leave 'clips' out for the reference calibration clips, or list at least one clip.",
        )
    clips = []
    for i, raw in enumerate(data.get("clips", [])):
        if not isinstance(raw, dict) or "name" not in raw:
            raise _fail(origin, f"clips[{i}]", "must be an object with a name")
        if raw.get("kind") is not None and raw["kind"] not in CLIP_KINDS:
            raise _fail(origin, f"clips[{i}].kind", f"must be one of {', '.join(CLIP_KINDS)}, got {raw['kind']!r}")
        if raw.get("kind") is None and not (raw.get("video") and raw.get("mask")):
            raise _fail(origin, f"clips[{i}]", "needs either a synthetic kind or both video and mask files")
        try:
            clips.append(ClipSource(**raw))
        except TypeError as exc:
            raise _fail(origin, f"clips[{i}]", f"has an unknown field ({exc})") from exc
    check_unique_clips(clips, f"{origin}: clips")
    return Workload(**kwargs, clips=tuple(clips))


def current_workload_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A stored workload dict (a study's attrs) in today's form: an older hetcache wrote `"clips": []` for the
    default clips, which is now the absent key (an explicit empty list is refused by `workload_from_dict`)."""
    return {k: v for k, v in data.items() if not (k == "clips" and v == [])}


def load_workload(path: str | os.PathLike) -> Workload:
    """Read and validate a workload JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"workload file '{path}' does not exist.", "check the path.") from exc
    except json.JSONDecodeError as exc:
        raise InputError(
            f"workload file '{path}' is not valid JSON ({exc.msg}, line {exc.lineno}).", "fix the JSON."
        ) from exc
    return workload_from_dict(data, origin=f"workload file '{path}'")
