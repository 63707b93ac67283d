"""Inter-process locks on files (POSIX `flock`): one process at a time in a section that shares a file.

Used where a storage or folder has no transaction of its own: creating a study file that several workers open at
the same moment, failing orphaned trials of a journal study. The lock file lives beside what it guards (so it is
shared by every process that sees that file) and is left in place: removing it would race with a waiting locker.

A claim (`claim`) is the other kind: one process holds a folder for a whole command and any other is refused at
once, not made to wait. Its file records the holder's PID and host (for the refusal), is removed when the holder
exits, and a holder that died without removing it holds nothing: the kernel drops its lock with the process, so
the next claimant takes the claim over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".hetcache.lock"
CLAIM_SUFFIX = ".hetcache-claim"


class ClaimHeld(RuntimeError):
    """Another live process holds the claim; `holder` says which ("pid N on host H")."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is claimed by {holder}")
        self.path, self.holder = path, holder


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


def claim_path(guarded: Path) -> Path:
    """The claim file of `guarded` (a sibling: `runs/tune` → `runs/tune.hetcache-claim`)."""
    return guarded.with_name(guarded.name + CLAIM_SUFFIX)


@contextlib.contextmanager
def claim(guarded: Path) -> Iterator[Path]:
    """Hold `guarded` for this process alone for the block; ClaimHeld at once when a live process holds it.

    The claim is an exclusive non-blocking `flock` on the claim file, taken on the file the path names now (a file
    a releasing holder has just unlinked is retried), then stamped with this PID and host; on exit the file is
    removed before the lock is dropped, and so are the folders made for it that are left empty.
    """
    path = claim_path(guarded)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # removed again if left empty
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ClaimHeld(path, holder) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it between our open and our lock: claim the file the path names now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        for folder in made:  # deepest first; one the command has written into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
