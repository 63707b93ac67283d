"""Inter-process locks on files (POSIX `flock`): one process at a time in a section that shares a file.

Used where a storage or folder has no transaction of its own: creating a study file that several workers open at
the same moment, failing orphaned trials of a journal study. The lock file lives beside what it guards (so it is
shared by every process that sees that file) and is left in place: removing it would race with a waiting locker.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".hetcache.lock"


def lock_path(guarded: Path) -> Path:
    """The lock file of `guarded` (a sibling: `study.db` → `study.db.hetcache.lock`)."""
    return guarded.with_name(guarded.name + SUFFIX)


@contextlib.contextmanager
def file_lock(guarded: Path | None) -> Iterator[None]:
    """Hold the exclusive lock of `guarded` for the block (waits for other holders); None: no lock."""
    if guarded is None:
        yield
        return
    path = lock_path(guarded)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
