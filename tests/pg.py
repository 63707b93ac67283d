"""A throw-away PostgreSQL server on loopback for tests: initdb + pg_ctl in a temp dir, as a non-root user.

The server never runs as root: when the tests run as root it runs as the `postgres` system user (runuser / su).
Tests that need it skip only when no PostgreSQL server binaries are installed (CI installs them, see .ci/run).
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "optuna"
DATABASE = "hetcache"


def server_bin() -> Path | None:
    """The newest PostgreSQL server bin folder (Debian layout), or one on PATH; None when not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: float(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    """Run as `postgres` when we are root (initdb refuses root), else as ourselves."""
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *args]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]


def _run(args: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        subprocess.run(_as_server_user(args), check=True, stdout=out, stderr=subprocess.STDOUT, timeout=120)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a private cluster on 127.0.0.1 and a free port; yield its base URL; stop and delete it afterwards."""
    bin_dir = server_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="hetcache-pg-"))
    data, log = root / "data", root / "server.log"
    port = free_port()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o700)
    started = False
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"], root / "initdb.log")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=100 -c fsync=off"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"], root / "ctl.log")
        started = True
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE], root / "ctl.log")
        yield f"127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], root / "ctl.log")
        shutil.rmtree(root, ignore_errors=True)
