"""Ctrl+C during a tuning run, once or several times: the run stops, the study stays whole.

While `handled()` is active (the CLI's whole run), SIGINT raises KeyboardInterrupt only where nothing is being
written to the study: inside a trial's evaluation (`allowed()`, the objective's body) at once, elsewhere inside
`deferred()` (Optuna's own bookkeeping around a trial: sampling, storing its state) as soon as that part is done. A
second Ctrl+C while the first is being handled is ignored, so the interrupted trial is stored as failed and its point
re-queued (`recovery.requeue_interrupted`) before the process exits. Outside `handled()` (the library, tests),
SIGINT keeps Python's default behaviour and these sections change nothing.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass


class Interrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl+C; `requeued` is the number of the trial whose point was re-queued, if any."""

    def __init__(self, requeued: int | None = None):
        super().__init__()
        self.requeued = requeued


@dataclass
class _Gate:
    active: bool = False  # handled() installed the handler
    deferring: bool = False  # inside deferred() and not inside allowed()
    pending: bool = False  # a Ctrl+C arrived while deferring
    seen: int = 0  # Ctrl+C presses since handled() began


_GATE = _Gate()


def _on_sigint(signum: int, frame: object) -> None:
    _GATE.seen += 1
    if _GATE.seen > 1:
        return  # the first one is being handled: the study's writes finish first
    if _GATE.deferring:
        _GATE.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Install the SIGINT handler for the block (main thread only). After it the previous handler is restored, unless
    a Ctrl+C stopped the run: then SIGINT stays ignored, so that a second one cannot break the process's exit."""
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _GATE.active, _GATE.deferring, _GATE.pending, _GATE.seen = True, False, False, 0
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if _GATE.seen else previous)
        _GATE.active = _GATE.deferring = _GATE.pending = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section that writes to the study: a Ctrl+C inside waits for its end (then raises KeyboardInterrupt)."""
    outer = _GATE.deferring
    _GATE.deferring = _GATE.active
    try:
        yield
    finally:
        _GATE.deferring = outer
    if _GATE.pending and not outer:
        _GATE.pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def allowed() -> Iterator[None]:
    """A section a Ctrl+C may stop at once (a trial's evaluation), also when one arrived just before it began."""
    if _GATE.pending:
        _GATE.pending = False
        raise KeyboardInterrupt
    outer = _GATE.deferring
    _GATE.deferring = False
    try:
        yield
    finally:
        _GATE.deferring = outer
