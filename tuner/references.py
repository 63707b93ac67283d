"""Uncached reference outputs per calibration clip, computed once and kept on disk in the run folder.

Every trial compares its cached output with the uncached output of the same pipeline, seed and inputs. The references
follow the workload's editing contract (a pasted or blended reference for a pasted or blended trial). The reference
frames and final latents are stored as one `.npz` per clip under `references/<contract>-<workload hash>/` (written
atomically, so concurrent workers sharing a folder never see a partial file) and reused on resume.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hetcache.atomic import atomic_path, write_json
from hetcache.fingerprint import model_fingerprint
from hetcache.workloads.clips import Clip

FOLDER = "references"
RETIME_WINDOW = 3  # uncached timings per clip kept on a worker; their median is the time speedup's reference


@dataclass
class Reference:
    """The uncached output of one clip and how long its denoising loop took when it was computed."""

    frames: np.ndarray
    latents: torch.Tensor
    denoise_seconds: float


def weights_signature(model: torch.nn.Module, tensors: int = 4, values: int = 256) -> str:
    """A cheap hash of some exact weight values (first and last parameters): tells retrained weights apart.

    Reads a few hundred values per tensor, never whole tensors, so it costs nothing even for a 14B model.
    """
    params = list(model.parameters())
    digest = hashlib.sha256()
    for param in params[:tensors] + params[-tensors:]:
        flat = param.detach().flatten()
        for part in (flat[:values], flat[-values:]):
            digest.update(part.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def workload_key(session: Any) -> str:
    """<contract>-<hash>: the editing contract the references follow, and a short hash of everything the uncached
    output depends on (the workload with its contract, the architecture and the weights)."""
    contract = session.workload.editing_contract
    payload = {
        "workload": session.workload.to_dict(),
        "contract": contract.name,
        "model": model_fingerprint(session.transformer)["fingerprint"],
        "weights": weights_signature(session.transformer),
    }
    return f"{contract.slug}-{hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]}"


class ReferenceStore:
    """Reference outputs of a session's clips, from disk when present, else generated and saved."""

    def __init__(self, root: Path, session: Any):
        self.session = session
        self.folder = Path(root) / workload_key(session)
        self._memory: dict[str, Reference] = {}
        self._local_seconds: dict[str, list[float]] = {}

    def _path(self, clip: Clip) -> Path:
        return self.folder / f"{clip.name}.npz"

    def get(self, clip: Clip) -> Reference:
        """The reference of `clip` (memory, then disk, then a fresh uncached run that is saved)."""
        if clip.name in self._memory:
            return self._memory[clip.name]
        path = self._path(clip)
        reference = self._load(path, clip) if path.is_file() else None
        if reference is None:
            return self.store(clip, self.session.generate(clip))
        self._memory[clip.name] = reference
        return reference

    def has(self, clip: Clip) -> bool:
        """Whether the reference of `clip` is at hand (in memory or on disk) without generating it."""
        return clip.name in self._memory or self._path(clip).is_file()

    def store(self, clip: Clip, generation: Any) -> Reference:
        """Keep an uncached generation of `clip` (made by the caller, e.g. with hooks recording it) as its reference."""
        reference = Reference(generation.frames, generation.latents, generation.denoise_seconds)
        self._save(self._path(clip), reference)
        self._memory[clip.name] = reference
        return reference

    def local_seconds(self, clip: Clip) -> float:
        """Uncached denoising time of `clip` on this worker: the median of its recent timings (the first is taken
        after the reference run, never in the slow first run of a process)."""
        if clip.name not in self._local_seconds:
            self.retime(clip)
        return statistics.median(self._local_seconds[clip.name])

    def timings(self, clip: Clip) -> list[float]:
        """This worker's recent uncached denoising times of `clip` (empty before the first)."""
        return list(self._local_seconds.get(clip.name, []))

    def retime(self, clip: Clip) -> float:
        """Time one more uncached run of `clip` on this worker (decoding skipped); keeps the last RETIME_WINDOW."""
        seconds = self.session.generate(clip, decode=False).denoise_seconds
        window = self._local_seconds.setdefault(clip.name, [])
        window.append(seconds)
        del window[:-RETIME_WINDOW]
        return seconds

    def _load(self, path: Path, clip: Clip) -> Reference | None:
        try:
            with np.load(path) as data:
                frames, latents = data["frames"], torch.from_numpy(data["latents"].copy())
                seconds = float(data["denoise_seconds"])
        except (OSError, KeyError, ValueError):
            return None
        if frames.shape[:3] != clip.frames.shape[:3]:
            return None
        return Reference(frames, latents, seconds)

    def _save(self, path: Path, reference: Reference) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "workload.json"
        if not info.exists():
            workload = self.session.workload
            write_json(info, {"workload": workload.to_dict(), "contract": workload.contract, "created": time.time()})
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                frames=np.asarray(reference.frames, dtype=np.float32),
                latents=reference.latents.float().numpy(),
                denoise_seconds=np.float64(reference.denoise_seconds),
            )
