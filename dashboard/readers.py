"""Readers of the files the other parts write (docs/files.md), with one friendly error per bad input.

Profiles load through the profiler's own reader (`hetcache.profiler.store.Profile.load`). Runs are `run.json` plus
the mp4s next to it. Nothing here computes what the writers computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hetcache.profiler.store import PROFILE_FIX, Profile

from hetcache.errors import HetCacheError
from hetcache.run_record import RUN_FIX, read_run_record


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

    def __init__(self, folder: Path, data: dict[str, Any], source: Mapping[str, Any]):
        self.folder = folder
        self.data = data
        self._source = source
        self._arrays: dict[str, np.ndarray] = {}

    def _tensors(self) -> Mapping[str, Any]:
        """The tensor mapping (opened on first use by `_LazyTensors`)."""
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


def load_profile(folder: Path) -> ProfileView:
    """Load a profile folder (profile.json + tensors.safetensors) through the profiler's loader."""
    folder = Path(folder)
    try:
        loaded = Profile.load(folder)
    except HetCacheError as exc:
        raise DataError(exc.what, exc.fix or PROFILE_FIX) from None
    return ProfileView(folder, loaded.data, _LazyTensors(loaded))


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
