"""Atomic file output: write to a temporary sibling, then rename, so no half-written file is ever left.

Files get the permissions the umask gives (0644 under the usual 022), whatever the library that wrote them chose.
Every output folder carries a marker file (`MARKER`); only a marked folder may ever be replaced.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = ".hetcache-output"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the current umask (0o644 under 022)."""
    return 0o666 & ~_umask()


def write_marker(folder: str | os.PathLike, kind: str) -> Path:
    """Mark `folder` as written by hetcache (the marker names the tool and what the folder holds)."""
    from . import __version__

    return write_text(Path(folder) / MARKER, json.dumps({"tool": f"hetcache {__version__}", "kind": kind}) + "\n")


def is_marked(folder: str | os.PathLike) -> bool:
    """Whether hetcache wrote `folder` (it holds the marker file)."""
    return (Path(folder) / MARKER).is_file()


def _normalise_modes(root: Path) -> None:
    """Give every file under `root` the umask's file mode and every folder the umask's folder mode."""
    files, folders = file_mode(), 0o777 & ~_umask()
    root.chmod(folders)
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            (Path(folder) / name).chmod(folders)
        for name in names:
            (Path(folder) / name).chmod(files)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{suffix}.part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(file_mode())  # after writing: some writers (safetensors) re-create the file as 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(value: Any) -> Any:
    """A JSON-safe copy: NaN / inf become null, tuples become lists, numpy scalars become Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically (NaN / inf written as null)."""
    return write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def holds_only_marker(path: str | os.PathLike) -> bool:
    """Whether folder `path` holds nothing but the marker (or one being written by a worker starting alongside)."""
    return Path(path).is_dir() and all(MARKER in entry.name for entry in Path(path).iterdir())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, kind: str = "output") -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` (marked as a hetcache `kind` folder) on success.

    Nothing is left behind on error. With `overwrite`, an existing marked (or empty) `path` is replaced only once
    the new content is complete; a non-empty folder hetcache did not write is never replaced.
    """
    from .errors import InputError

    path = Path(path).absolute()
    if path.exists() and not (is_marked(path) or holds_only_marker(path)):
        raise InputError(
            f"'{path}' exists and was not written by hetcache (no {MARKER} marker); it is never replaced.",
            "choose another output folder, or move that folder away yourself.",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        write_marker(tmp, kind)
        _normalise_modes(tmp)
        if path.exists():
            if not (overwrite or holds_only_marker(path)):
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
