"""Readers of the files the other parts write (formats: CONTRACTS.md), with one friendly error per bad input.

Profiles load through `hetcache.profiler.Profile` when the profiler is installed, else through a minimal reader of
the same contract. Runs are `run.json` plus the mp4s next to it. Nothing here computes what the writers computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hetcache.errors import HetCacheError
from hetcache.run_record import RUN_FIX, read_run_record

from .sources import PROFILE_FILE

PROFILE_SCHEMA_PREFIX = "hetcache.profile/v"
PROFILE_SCHEMA_VERSION = 1
TENSORS_FILE = "tensors.safetensors"


class DataError(HetCacheError):
    """A profile, run folder, study or policy the dashboard cannot show; the message names it and the fix."""


def read_json(path: Path, what: str, fix: str) -> Any:
    """Parse a JSON file, or raise DataError naming the file, the problem and `fix`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' does not exist.", fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} '{path}' cannot be read ({exc}).", fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{what} '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "it is probably truncated or was written by something else.",
            fix,
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# profiles


class ProfileView:
    """A loaded profile folder: `data` is profile.json; arrays come from tensors.safetensors when first asked for."""

    def __init__(self, folder: Path, data: dict[str, Any], source: Mapping[str, Any] | None = None):
        self.folder = folder
        self.data = data
        self._source = source
        self._arrays: dict[str, np.ndarray] = {}

    def _tensors(self) -> Mapping[str, Any]:
        """The tensor mapping, opened on first use."""
        if self._source is None:
            self._source = _read_tensors(self.folder, self.data)
        return self._source

    def array(self, name: str, clip: str | None = None) -> np.ndarray | None:
        """Array `name` of a clip (default: the first) as float32 (`token_class` as int), or None if not recorded."""
        key = self.prefix(clip) + name
        if key not in self._arrays:
            tensors = self._tensors()
            if key not in tensors:
                return None
            value = np.asarray(tensors[key])
            self._arrays[key] = value.astype(np.int64) if name == "token_class" else value.astype(np.float32)
        return self._arrays[key]

    @property
    def meta(self) -> dict[str, Any]:
        """The "tensors" record of profile.json (shapes, axes, pooling, per-clip prefixes)."""
        meta = self.data.get("tensors")
        return meta if isinstance(meta, dict) else {}

    @property
    def clip_names(self) -> list[str]:
        """Clips whose per-token arrays the tensor file holds (the first clip always)."""
        clips = [str(c.get("name")) for c in self.data.get("clips") or [] if isinstance(c, dict)]
        stored = self.meta.get("clips")
        return [c for c in clips if c in stored] if isinstance(stored, dict) else clips[:1]

    def prefix(self, clip: str | None) -> str:
        """Key prefix of a clip's arrays in the tensor file ("" for the first clip)."""
        names = self.clip_names
        if clip is None or not names or clip == names[0]:
            return ""
        stored = self.meta.get("clips")
        return str(stored.get(clip, f"{clip}/")) if isinstance(stored, dict) else f"{clip}/"

    @property
    def layer_names(self) -> list[str]:
        """Recorded layer names ("blocks.3", "vace_blocks.1"), in tensor order."""
        return [str(layer.get("name", i)) for i, layer in enumerate(self.data.get("layers", []))]


PROFILE_FIX = "re-create it with hetcache-profile (make demo writes runs/demo/profile)."


def _check_profile(data: Any, path: Path) -> dict[str, Any]:
    """The fields the pages rely on are there and of the right kind (schema, layers, step curve)."""
    if not isinstance(data, dict):
        raise DataError(f"profile '{path}' must hold a JSON object, got {type(data).__name__}.", PROFILE_FIX)
    schema = data.get("schema")
    if not isinstance(schema, str) or not schema.startswith(PROFILE_SCHEMA_PREFIX):
        raise DataError(f"'{path}' is not a hetcache profile (schema {schema!r}).", PROFILE_FIX)
    version = schema[len(PROFILE_SCHEMA_PREFIX) :]
    if not version.isdigit() or int(version) > PROFILE_SCHEMA_VERSION:
        raise DataError(
            f"profile '{path}' uses schema {schema!r}, which this dashboard does not read.",
            "upgrade hetcache, or re-create the profile with this version.",
        )
    if not isinstance(data.get("layers"), list) or not all(isinstance(x, dict) for x in data["layers"]):
        raise DataError(f"profile '{path}': field 'layers' must be a list of objects.", PROFILE_FIX)
    if not isinstance(data.get("step_curve", {}), dict):
        raise DataError(f"profile '{path}': field 'step_curve' must be an object.", PROFILE_FIX)
    return data


def _profiler_class():
    """`hetcache.profiler.Profile` when the profiler part is installed, else None."""
    try:
        from hetcache.profiler import Profile
    except ImportError:
        return None
    return Profile if hasattr(Profile, "load") and hasattr(Profile, "tensors") else None


def load_profile(folder: Path) -> ProfileView:
    """Load a profile folder (profile.json + tensors.safetensors), through the profiler's loader when installed."""
    folder = Path(folder)
    path = folder / PROFILE_FILE
    profile_cls = _profiler_class()
    if profile_cls is None:
        return ProfileView(folder, _check_profile(read_json(path, "profile file", PROFILE_FIX), path))
    try:
        loaded = profile_cls.load(folder)
    except HetCacheError as exc:
        raise DataError(exc.what, exc.fix or PROFILE_FIX) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"profile '{folder}' cannot be loaded ({exc}).", PROFILE_FIX) from None
    return ProfileView(folder, _check_profile(loaded.data, path), _LazyTensors(loaded))


class _LazyTensors(Mapping):
    """The profiler's lazy tensor mapping, opened on first use, with its errors turned into DataError."""

    def __init__(self, profile: Any):
        self._profile = profile
        self._mapping: Mapping[str, Any] | None = None

    def _open(self) -> Mapping[str, Any]:
        """Open the profiler's tensor mapping once."""
        if self._mapping is None:
            try:
                self._mapping = self._profile.tensors("numpy")
            except HetCacheError as exc:
                raise DataError(exc.what, exc.fix or PROFILE_FIX) from None
            except Exception as exc:
                raise DataError(
                    f"profile tensors of '{self._profile.path}' cannot be read ({exc}).", PROFILE_FIX
                ) from None
        return self._mapping

    def __getitem__(self, key: str) -> Any:
        return self._open()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._open())

    def __len__(self) -> int:
        return len(self._open())


def _read_tensors(folder: Path, data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of tensors.safetensors read with safetensors directly (when the profiler is not installed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = data.get("tensors") if isinstance(data.get("tensors"), dict) else {}
    path = folder / str(meta.get("file") or TENSORS_FILE)
    if not path.is_file():
        raise DataError(f"profile tensor file '{path}' does not exist.", PROFILE_FIX)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"profile tensor file '{path}' cannot be read ({exc}).", PROFILE_FIX) from None


# ---------------------------------------------------------------------------------------------------------------
# run folders


@dataclass
class RunView:
    """A loaded run folder: `record` is run.json; videos are read on demand."""

    folder: Path
    record: dict[str, Any]

    @property
    def clips(self) -> list[dict[str, Any]]:
        """One record per clip (timings, engine stats, quality)."""
        return self.record["clips"]

    @property
    def compared(self) -> bool:
        """Whether the run holds both the uncached and the cached output."""
        return self.record.get("policy") is not None and any("quality" in c for c in self.clips)

    def clip(self, name: str) -> dict[str, Any]:
        """The record of clip `name`."""
        for row in self.clips:
            if row.get("clip") == name:
                return row
        raise DataError(f"run '{self.folder}' has no clip '{name}'.", "pick one of its clips.")

    def video_paths(self, name: str) -> dict[str, Path | None]:
        """Paths of the outputs and inputs of clip `name` (cached, uncached, input, mask)."""
        cached = self.record.get("policy") is not None
        return {
            "cached": self.folder / f"{name}.mp4" if cached else None,
            "uncached": self.folder / (f"{name}.uncached.mp4" if cached else f"{name}.mp4"),
            "input": self.folder / "inputs" / f"{name}.mp4",
            "mask": self.folder / "inputs" / f"{name}.mask.mp4",
        }


def load_run(folder: Path) -> RunView:
    """Load a run folder's run.json with hetcache's one reader of it (hetcache.run_record)."""
    try:
        return RunView(Path(folder), read_run_record(folder))
    except HetCacheError as exc:
        raise DataError(exc.what, exc.fix) from None


def read_frames(path: Path, what: str) -> np.ndarray:
    """Frames [F, H, W, 3] uint8 of an output or input video, or DataError naming the file."""
    from hetcache.video import read_video

    try:
        frames, _ = read_video(path, what)
    except HetCacheError as exc:
        raise DataError(exc.what, RUN_FIX) from None
    return frames


def read_mask_frames(path: Path) -> np.ndarray:
    """Mask frames [F, H, W] bool of a run's input mask, or DataError naming the file."""
    from hetcache.video import read_mask

    try:
        return read_mask(path)
    except HetCacheError as exc:
        raise DataError(exc.what, RUN_FIX) from None
