"""Optuna storages of tuning studies, opened here for every part: the tuner (read-write) and the dashboard (read-only).

A study lives in a SQLite or journal file in the run folder, or in a shared database (`postgresql+psycopg://…`)
through which several machines tune one study. RDB storages opened for tuning get a heartbeat, so that a trial
whose worker died is marked failed and re-queued (`recovery.Requeue`; journals have the process check only).
Opened read-only, a storage is never created: a missing file, a file that is not SQLite or holds no Optuna tables
is an InputError.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna

from hetcache.errors import InputError
from hetcache.locks import file_lock

from .recovery import Requeue

DEFAULT_FILE = "study.db"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_PREFIX, JOURNAL_PREFIX = "sqlite:///", "journal:"
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_BUSY_S = 60  # how long a worker waits for another one's SQLite transaction before it gives up
PG_CREATION_LOCK = 0x6865746361636865  # advisory-lock key ("hetcache") that serialises creating Optuna's tables
READ_FIX = "pass the storage URL hetcache-tune wrote to (--storage), e.g. sqlite:///runs/demo/tune/study.db."


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


def url_for_file(path: Path) -> str:
    """The storage URL of a study file: sqlite:///<path> for .db files, journal:///<path> for journals."""
    return f"{'sqlite' if path.suffix in SQLITE_SUFFIXES else 'journal'}:///{path}"


def reap_lock(url: str) -> Path | None:
    """The study file whose lock serialises failing orphaned trials (journals; RDB storages lock rows)."""
    return file_of(url) if url.startswith(JOURNAL_PREFIX) else None


def is_study_file(path: Path) -> bool:
    """Whether a path names a study file by its suffix (a SQLite database or an Optuna journal)."""
    return path.suffix in SQLITE_SUFFIXES + JOURNAL_SUFFIXES


def resolve_url(storage: str | None, out: Path) -> str:
    """A storage URL from `--storage` (URL, or a .db / .log file path) or the default file in `out`."""
    if storage is None:
        return f"{SQLITE_PREFIX}{(out / DEFAULT_FILE).resolve()}"
    storage = storage.strip()
    if "://" in storage or storage.startswith(JOURNAL_PREFIX):
        return storage
    path = Path(storage).expanduser()
    if is_study_file(path):
        return url_for_file(path.resolve())
    raise InputError(
        f"--storage '{storage}' is neither a database URL nor a .db / .log file.",
        "pass e.g. postgresql+psycopg://user:pass@host:5432/db, runs/tune/study.db or runs/tune/study.log.",
    )


def file_of(url: str) -> Path | None:
    """The file of a sqlite:/// or journal: URL (journal:///abs, journal:relative), None for a database server."""
    if url.startswith(SQLITE_PREFIX):
        return Path(url[len(SQLITE_PREFIX) :])
    if url.startswith(JOURNAL_PREFIX):
        rest = url[len(JOURNAL_PREFIX) :]
        return Path("/" + rest.lstrip("/") if rest.startswith("/") else rest)
    return None


def _check_readable(url: str) -> None:
    """Refuse a missing, non-SQLite or non-Optuna file before Optuna would create anything in it."""
    path = file_of(url)
    if path is None:
        return
    kind = "study database" if url.startswith(SQLITE_PREFIX) else "journal file"
    if not path.is_file():
        raise InputError(f"{kind} '{path}' does not exist.", READ_FIX)
    if url.startswith(JOURNAL_PREFIX):
        return
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise InputError(f"'{path}' is not an SQLite database (it may be corrupt or another kind of file).", READ_FIX)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise InputError(f"SQLite database '{path}' cannot be read ({exc}).", READ_FIX) from None
    if "studies" not in tables:
        raise InputError(f"SQLite database '{path}' holds no Optuna studies.", READ_FIX)


def _serialise_sqlite(engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna's row locks (`SELECT … FOR UPDATE`) are no-ops on SQLite, so two workers could both pop the same queued
    trial, or both fail the same stale one; serialised transactions make those check-then-write steps atomic.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver leaves BEGIN to the "begin" event below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the tables were created predate the listeners


@contextmanager
def creation_lock(url: str, engine_kwargs: dict | None) -> Iterator[None]:
    """Hold a lock that lets one process at a time create (or check) a storage's tables.

    Workers started together on a new database would each run CREATE TABLE: SQLite files are locked beside the
    file, PostgreSQL databases with a session advisory lock (concurrent CREATE TABLE there fails on pg_type).
    """
    if url.startswith(SQLITE_PREFIX):
        with file_lock(file_of(url)):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url, **(engine_kwargs or {}))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_CREATION_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_CREATION_LOCK})
    finally:
        engine.dispose()


def open_storage(url: str, heartbeat: Heartbeat | None = None, read_only: bool = False) -> optuna.storages.BaseStorage:
    """Connect to the storage; unreachable or malformed URLs raise InputError.

    For tuning (the default) a missing file or table set is created and RDB storages get the heartbeat; read-only
    (the dashboard, exports) nothing is created and a storage that holds no studies is refused.
    """
    shown = display_url(url)
    if read_only:
        _check_readable(url)
    if url.startswith(JOURNAL_PREFIX):
        path = file_of(url)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        except Exception as exc:
            raise InputError(f"journal file '{path}' cannot be read as an Optuna journal ({exc}).", READ_FIX) from None
    if url.startswith(SQLITE_PREFIX) and not read_only:
        file_of(url).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = None
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    elif url.startswith(SQLITE_PREFIX):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_S}}
    beat = heartbeat or Heartbeat()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if read_only:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
        with warnings.catch_warnings(), creation_lock(url, engine_kwargs):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=beat.interval,
                grace_period=beat.grace,
                heartbeat_stale_trial_callback=Requeue(beat.max_retry),
            )
        if url.startswith(SQLITE_PREFIX):
            _serialise_sqlite(storage.engine)
        return storage
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
