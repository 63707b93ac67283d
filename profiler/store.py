"""The Profile folder: `profile.json` (schema hetcache.profile/v1) and `tensors.safetensors` (float16 arrays).

Written atomically (a temporary sibling folder renamed into place); read back with `Profile.load`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hetcache.atomic import atomic_dir, json_safe
from hetcache.errors import InputError

SCHEMA = "hetcache.profile/v1"
JSON_FILE = "profile.json"
TENSOR_FILE = "tensors.safetensors"


PROFILE_FIX = "re-create it with hetcache-profile (make demo writes runs/demo/profile)."


def read_profile_data(folder: str | os.PathLike) -> dict[str, Any]:
    """The profile.json of a profile folder, checked (schema, layers, step curve): the one reader of that file.

    Every error is an InputError naming the file and what is wrong; the tensor file is not needed here.
    """
    folder = Path(folder)
    source = folder / JSON_FILE
    if not source.is_file():
        raise InputError(
            f"'{folder}' is not a profile folder (it holds no {JSON_FILE}).",
            "pass a folder written by hetcache-profile.",
        )
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"profile file '{source}' cannot be read ({exc}).", PROFILE_FIX) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"'{source}' is not valid JSON ({exc.msg}, line {exc.lineno}); it is probably truncated.", PROFILE_FIX
        ) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise InputError(
            f"'{source}' has schema {schema!r}; this hetcache reads {SCHEMA!r}.",
            "profile again with this version, or upgrade hetcache.",
        )
    if not isinstance(data.get("layers"), list) or not all(isinstance(x, dict) for x in data["layers"]):
        raise InputError(f"profile '{source}': field 'layers' must be a list of objects.", PROFILE_FIX)
    if not isinstance(data.get("step_curve", {}), dict):
        raise InputError(f"profile '{source}': field 'step_curve' must be an object.", PROFILE_FIX)
    return data


class ProfileTensors(Mapping):
    """The arrays of a profile, read from the file only when asked for (numpy, or torch with framework='pt')."""

    def __init__(self, path: Path | None, loaded: dict[str, torch.Tensor] | None, framework: str):
        self.path, self.loaded, self.framework = path, loaded, framework
        if loaded is None:
            with safe_open(str(path), framework="pt") as handle:
                self._keys = list(handle.keys())
        else:
            self._keys = list(loaded)

    def __getitem__(self, name: str):
        if name not in self._keys:
            raise KeyError(name)
        if self.loaded is not None:
            tensor = self.loaded[name]
            return tensor.numpy() if self.framework == "numpy" else tensor
        with safe_open(str(self.path), framework=self.framework) as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Profile:
    """A profile: `data` (the profile.json dict) and its tensors (in memory after profiling, lazy after loading)."""

    def __init__(self, data: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None, path: Path | None = None):
        self.data = data
        self._tensors = tensors
        self.path = path

    def tensors(self, framework: str = "numpy") -> ProfileTensors:
        """The arrays ("drift", "residual_drift", "attention", "token_class", …), loaded lazily."""
        if framework not in ("numpy", "pt"):
            raise InputError(f"framework {framework!r} is not supported.", "use 'numpy' or 'pt'.")
        if self._tensors is None and self.path is None:
            raise InputError("this profile has no tensors.", "profile a pipeline or load a saved profile folder.")
        return ProfileTensors(self.path / TENSOR_FILE if self._tensors is None else None, self._tensors, framework)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the folder atomically; an existing folder is refused unless `overwrite`."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise InputError(f"profile folder '{path}' already exists.", "pass --overwrite, or choose another --out.")
        tensors = self._tensors if self._tensors is not None else dict(self.tensors("pt"))
        with atomic_dir(path, "profile", overwrite=overwrite) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSOR_FILE))
            text = json.dumps(json_safe(self.data), indent=2, allow_nan=False) + "\n"
            (tmp / JSON_FILE).write_text(text, encoding="utf-8")
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        """Read a profile folder (profile.json checked by `read_profile_data`, tensors read lazily)."""
        path = Path(path)
        data = read_profile_data(path)
        if not (path / TENSOR_FILE).is_file():
            raise InputError(f"profile folder '{path}' has no {TENSOR_FILE}.", PROFILE_FIX)
        return cls(data, None, path)

    # -- conveniences ----------------------------------------------------------------------------------------
    @property
    def polynomial(self) -> list[float]:
        """The fitted rescaling polynomial, ready for a policy's `step_plan.polynomial`."""
        return list(self.data["step_curve"]["polynomial"])

    def layer(self, name: str) -> dict[str, Any]:
        for layer in self.data["layers"]:
            if layer["name"] == name:
                return layer
        raise KeyError(name)
