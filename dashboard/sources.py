"""Where the dashboard looks: the runs folder and storage URL it was started with, and what lies under the folder.

`hetcache-dashboard --runs DIR --storage URL` passes both through the environment, so the Streamlit script (and
AppTest) read them the same way. Discovery only looks at names and the first bytes of files; loading (and
reporting what is wrong with a file) is left to `readers`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hetcache.profiler.store import JSON_FILE as PROFILE_FILE
from hetcache.tuner.study_storage import JOURNAL_SUFFIXES, SQLITE_SUFFIXES, url_for_file

from hetcache.policy import is_policy_file
from hetcache.run_record import RUN_FILE

RUNS_ENV = "HETCACHE_DASHBOARD_RUNS"
STORAGE_ENV = "HETCACHE_DASHBOARD_STORAGE"
DEFAULT_RUNS = "runs"

MAX_DEPTH = 6
PEEK_BYTES = 512


@dataclass(frozen=True)
class Found:
    """Everything discovered under a runs folder (absolute paths; storage URLs for studies)."""

    root: Path
    profiles: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    policies: list[Path] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing at all was found."""
        return not (self.profiles or self.runs or self.studies or self.policies)

    def label(self, path: Path | str) -> str:
        """A short name for a path or storage URL: relative to the root where possible."""
        text = str(path)
        for prefix in ("sqlite:///", "journal:///"):
            if text.startswith(prefix):
                text = "/" + text[len(prefix) :].lstrip("/")
        try:
            return str(Path(text).relative_to(self.root)) or "."
        except ValueError:
            return str(path)


def configured_runs() -> Path:
    """The runs folder the dashboard was started with (default: ./runs)."""
    return Path(os.environ.get(RUNS_ENV) or DEFAULT_RUNS).expanduser()


def configured_storage() -> str:
    """The storage URL passed with --storage, or an empty string."""
    return os.environ.get(STORAGE_ENV, "").strip()


def _peek(path: Path) -> bytes:
    """The first bytes of a file (empty if unreadable), enough to tell its kind."""
    try:
        with path.open("rb") as handle:
            return handle.read(PEEK_BYTES)
    except OSError:
        return b""


def _is_journal(path: Path) -> bool:
    """An Optuna journal file: JSON lines with op codes."""
    return path.suffix in JOURNAL_SUFFIXES and b'"op_code"' in _peek(path)


def _is_policy(path: Path) -> bool:
    """A policy file: JSON naming the policy schema near its start."""
    return path.name not in (PROFILE_FILE, RUN_FILE) and is_policy_file(path)


def discover(root: Path) -> Found:
    """Walk `root` (hidden and half-written `.…` folders skipped) for profiles, runs, studies and policies."""
    root = root.resolve()
    found = Found(root=root)
    if not root.is_dir():
        return found
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs.clear()
        names = set(files)
        if PROFILE_FILE in names:
            found.profiles.append(here)
        if RUN_FILE in names:
            found.runs.append(here)
        for name in sorted(names):
            path = here / name
            if name.startswith("."):
                continue
            if path.suffix in SQLITE_SUFFIXES or _is_journal(path):
                found.studies.append(url_for_file(path))
            elif _is_policy(path):
                found.policies.append(path)
    return found
