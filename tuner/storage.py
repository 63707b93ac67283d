"""Optuna storages for tuning studies: a SQLite or journal file in the run folder, or a shared database URL.

Several machines share one study through PostgreSQL (`postgresql+psycopg://user:pass@host/db`). RDB storages get a
heartbeat, so that a trial whose worker died is marked failed and re-queued (RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from hetcache.errors import InputError

DEFAULT_FILE = "study.db"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


@dataclass(frozen=True)
class Heartbeat:
    """Heartbeat settings for RDB storages: a trial with no heartbeat for `grace` seconds is stale."""

    interval: int = 30
    grace: int = 120
    max_retry: int = 2


def display_url(url: str) -> str:
    """The storage URL with any password replaced by *** and a file under the working directory made relative."""
    if "://" not in url:
        return url
    scheme, _, path = url.partition(":///")
    if scheme in ("sqlite", "journal") and Path(path).is_absolute():
        try:
            return f"{scheme}:///{Path(path).relative_to(Path.cwd())}"
        except ValueError:
            return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…"


def resolve_url(storage: str | None, out: Path) -> str:
    """A storage URL from `--storage` (URL, or a .db / .log file path) or the default file in `out`."""
    if storage is None:
        return f"sqlite:///{(out / DEFAULT_FILE).resolve()}"
    if "://" in storage:
        return storage
    path = Path(storage)
    if path.suffix in SQLITE_SUFFIXES:
        return f"sqlite:///{path.resolve()}"
    if path.suffix in JOURNAL_SUFFIXES:
        return f"journal:///{path.resolve()}"
    raise InputError(
        f"--storage '{storage}' is neither a database URL nor a .db / .log file.",
        "pass e.g. postgresql+psycopg://user:pass@host:5432/db, runs/tune/study.db or runs/tune/study.log.",
    )


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.BaseStorage:
    """Connect to the storage (creating its tables); unreachable or malformed URLs raise InputError."""
    shown = display_url(url)
    if url.startswith("journal:///"):
        path = Path(url[len("journal:///") - 1 :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else None
    beat = heartbeat or Heartbeat()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=beat.interval,
                grace_period=beat.grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=beat.max_retry
                ),
            )
    except ImportError as exc:
        driver = getattr(exc, "name", None) or getattr(exc.__cause__, "name", None) or "for this URL"
        raise InputError(
            f"storage '{shown}' needs the Python driver '{driver}', which is not installed.",
            "install it (pip install 'hetcache[postgres]' for psycopg), or use a postgresql+psycopg:// URL.",
        ) from exc
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise InputError(
            f"cannot open the study storage '{shown}' ({reason[0] if reason else type(exc).__name__}).",
            "check that the database server is running and reachable, and the URL, user and database name "
            "(e.g. postgresql+psycopg://user:pass@host:5432/db).",
        ) from exc
