"""Optuna storages of tuning studies, opened here for every part: the tuner (read-write) and the dashboard (read-only).

A study lives in a SQLite or journal file in the run folder, or in a shared database (`postgresql+psycopg://…`)
through which several machines tune one study. RDB storages opened for tuning get a heartbeat, so that a trial
whose worker died is marked failed and re-queued (`recovery.Requeue`; journals have the process check only).
Every storage passes `check_storage` first, before anything is created in it (and the dashboard runs it before it
serves): opened read-only, a storage is never created, and a missing file or one that holds no Optuna tables is an
InputError.
"""

from __future__ import annotations

import contextlib
import json
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


NEW_FILE_FIX = "pass a study file hetcache-tune wrote, or the name of a file that does not exist yet to start a study."
SERVER_FIX = (
    "check that the database server is running and reachable, and the URL, user and database name "
    "(e.g. postgresql+psycopg://user:pass@host:5432/db)."
)


def check_storage(url: str, read_only: bool = False) -> None:
    """Refuse a storage before anything is created in it or served from it, in one line naming the URL and the fix:
    a file that is not a study database / journal, a damaged SQLite file, a database of another application (tuning
    would add Optuna's tables to it), an unknown URL dialect or missing driver, an unreachable server; read-only
    (dashboard, export), also a missing file or one that holds no Optuna tables."""
    path = file_of(url)
    if path is None:
        _check_server(url, read_only)
    elif url.startswith(JOURNAL_PREFIX):
        _check_journal(path, read_only)
    else:
        _check_sqlite(path, read_only)


def _existing_file(path: Path, noun: str, read_only: bool) -> bool:
    """Whether a study file is there to check: refused when a read needs it and it is absent, or it is no file."""
    if not path.exists():
        if read_only:
            raise InputError(f"{noun} '{path}' does not exist.", READ_FIX)
        return False
    if not path.is_file():
        raise InputError(f"{noun} '{path}' is not a file.", READ_FIX if read_only else NEW_FILE_FIX)
    return True


def _check_sqlite(path: Path, read_only: bool) -> None:
    fix = READ_FIX if read_only else NEW_FILE_FIX
    if not _existing_file(path, "study database", read_only):
        return
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header and not read_only:
        return  # an empty file is an empty database: tuning creates the tables
    if header != SQLITE_HEADER:
        raise InputError(f"'{path}' is not an SQLite database (its first bytes are not SQLite's header).", fix)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            verdict = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        verdict = [str(exc)]
    if verdict != ["ok"]:
        raise InputError(
            f"SQLite database '{path}' is damaged ({verdict[0]}).",
            "restore it from a copy, or start the study in a new file (--storage, or another --out).",
        )
    if "studies" not in tables and (read_only or tables):
        holds = f"tables of another application ({', '.join(sorted(tables)[:3])})" if tables else "no tables"
        raise InputError(
            f"SQLite database '{path}' holds {holds}, not Optuna studies.",
            READ_FIX if read_only else "pass a new file name: hetcache-tune never adds its tables to another database.",
        )


def _check_journal(path: Path, read_only: bool) -> None:
    fix = READ_FIX if read_only else NEW_FILE_FIX
    if not _existing_file(path, "journal file", read_only):
        return
    with path.open("rb") as handle:
        first = handle.readline(1 << 20).strip()
    try:
        ok = not first or isinstance(json.loads(first), dict)
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"'{path}' is not an Optuna journal (its first line is not a JSON record).", fix)


def _check_server(url: str, read_only: bool) -> None:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = display_url(url)
    try:
        dialect = make_url(url).get_dialect()
    except NoSuchModuleError:  # a subclass of ArgumentError: first
        scheme = url.split("://", 1)[0]
        raise InputError(
            f"storage '{shown}': SQLAlchemy knows no database dialect '{scheme}'.",
            "use postgresql+psycopg://user:pass@host:5432/db (or mysql, …), or a .db / .log file path.",
        ) from None
    except ArgumentError:
        raise InputError(
            f"--storage '{shown}' is not a database URL.",
            "pass e.g. postgresql+psycopg://user:pass@host:5432/db, runs/tune/study.db or runs/tune/study.log.",
        ) from None
    kwargs = {"connect_args": {"connect_timeout": 10}} if dialect.name == "postgresql" else {}
    try:
        engine = create_engine(url, **kwargs)
    except ImportError as exc:
        raise _missing_driver(shown, exc) from exc
    try:
        with engine.connect() as conn:
            has_studies = inspect(conn).has_table("studies")
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise InputError(
            f"cannot connect to the study storage '{shown}' ({reason[0] if reason else type(exc).__name__}).",
            SERVER_FIX,
        ) from None
    finally:
        engine.dispose()
    if read_only and not has_studies:
        raise InputError(f"storage '{shown}' holds no Optuna studies.", READ_FIX)


def _missing_driver(shown: str, exc: ImportError) -> InputError:
    driver = getattr(exc, "name", None) or getattr(exc.__cause__, "name", None) or "for this URL"
    return InputError(
        f"storage '{shown}' needs the Python driver '{driver}', which is not installed.",
        "install it (pip install 'hetcache[postgres]' for psycopg), or use a postgresql+psycopg:// URL.",
    )


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
    check_storage(url, read_only)
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
            if read_only:  # Optuna still stamps alembic's version table on a new database: PostgreSQL under the lock
                lock = creation_lock(url, engine_kwargs) if url.startswith("postgresql") else contextlib.nullcontext()
                with lock:
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
        raise _missing_driver(shown, exc) from exc
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise InputError(
            f"cannot open the study storage '{shown}' ({reason[0] if reason else type(exc).__name__}).",
            SERVER_FIX if file_of(url) is None else READ_FIX,
        ) from exc
