"""Atomic file output: write to a temporary sibling, then rename, so no half-written file is ever left.

Files get the permissions the umask gives (0644 under the usual 022), whatever the library that wrote them chose.
Every output folder carries a marker file (`MARKER`) naming its kind and the files hetcache wrote into it; only a
marked folder of the same kind, holding nothing but those files, may ever be replaced.
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
GROWING_KIND = "tune"  # the one kind of folder written into over time (its marker lists no files)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the current umask (0o644 under 022)."""
    return 0o666 & ~_umask()


def _files_under(folder: Path) -> list[str]:
    """Every file (and link) under `folder` but the marker, as sorted relative POSIX paths."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != MARKER
    )


def write_marker(folder: str | os.PathLike, kind: str, files: list[str] | None = None) -> Path:
    """Mark `folder` as written by hetcache: the marker names the tool, the `kind` of command that wrote it and,
    for a folder written at once, the `files` it holds (so that a file added later is never deleted with it)."""
    from . import __version__

    marker: dict[str, Any] = {"tool": f"hetcache {__version__}", "kind": kind}
    if files is not None:
        marker["files"] = files
    return write_text(Path(folder) / MARKER, json.dumps(marker) + "\n")


def is_marked(folder: str | os.PathLike) -> bool:
    """Whether hetcache wrote `folder` (it holds the marker file)."""
    return (Path(folder) / MARKER).is_file()


def read_marker(folder: str | os.PathLike) -> dict[str, Any]:
    """The marker of `folder` ({} when unmarked or unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def replace_refusal(folder: str | os.PathLike, kind: str) -> str | None:
    """Why a `kind` output may not replace (or write into) the existing `folder`, or None when it may.

    Only a folder hetcache marked as the same kind may be replaced, and only when it holds nothing but the files
    its marker lists: a file someone added inside is never deleted with the folder.
    """
    folder = Path(folder)
    if holds_only_marker(folder):
        return None
    if not is_marked(folder):
        return f"is a non-empty folder hetcache did not write (no {MARKER} marker)"
    marker = read_marker(folder)
    recorded, listed = marker.get("kind"), marker.get("files")
    if recorded != kind:
        return f"is a hetcache {recorded if isinstance(recorded, str) else 'unknown'} folder, not a {kind} folder"
    if not isinstance(listed, list):
        if kind == GROWING_KIND:
            return None  # a tuning folder is written into over time and never replaced as a whole
        return "was written by an older hetcache that did not list its files, so yours cannot be told apart"
    extra = sorted(set(_files_under(folder)) - set(listed))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        return f"holds '{extra[0]}'{more}, which hetcache did not write there"
    return None


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
def atomic_dir(path: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` (marked as a hetcache `kind` folder) on success.

    Nothing is left behind on error. With `overwrite`, an existing `path` is replaced only once the new content is
    complete, and only when `replace_refusal` allows it (checked again just before the swap): a folder hetcache did
    not write, one of another kind, or one holding a file hetcache did not put there is never replaced.
    """
    from .errors import InputError

    path = Path(path).absolute()

    def check() -> None:
        if path.is_symlink():
            raise InputError(f"'{path}' is a symbolic link; it is never replaced.", "choose another output folder.")
        refusal = replace_refusal(path, kind) if path.exists() else None
        if refusal is not None:
            raise InputError(f"'{path}' {refusal}; it is never replaced.", "choose another output folder.")

    check()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        write_marker(tmp, kind, _files_under(tmp))
        _normalise_modes(tmp)
        if path.exists() or path.is_symlink():
            check()
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
