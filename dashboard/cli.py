"""`hetcache-dashboard [--runs DIR] [--storage URL] [--port N]`: serve the dashboard with `streamlit run`, headless.

The process becomes the Streamlit server (exec), so whoever started it stops the server with its own handle.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from hetcache import cli_types
from hetcache.cli_common import command_parser, run_cli
from hetcache.errors import InputError

from .sources import DEFAULT_RUNS, RUNS_ENV, STORAGE_ENV

APP = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"
EXAMPLES = (
    "hetcache-dashboard                                    # serves ./runs at http://127.0.0.1:8501/",
    "hetcache-dashboard --runs runs/demo --port 8502",
    "hetcache-dashboard --storage postgresql+psycopg://user:pass@db:5432/hetcache",
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of hetcache-dashboard."""
    parser = command_parser(
        argparse.ArgumentParser,
        "hetcache-dashboard",
        "Explore hetcache profiles, tuning studies, policies and runs in a local Streamlit app.",
        EXAMPLES,
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help=f"folder searched for profiles, studies, run folders and policies (default: ./{DEFAULT_RUNS})",
    )
    parser.add_argument("--storage", default="", help="an Optuna storage URL to open besides those under --runs")
    parser.add_argument(
        "--port", type=cli_types.port, default=DEFAULT_PORT, help=f"port to serve on, 1–65535 (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"address to bind (default {DEFAULT_ADDRESS}: this machine only)"
    )
    return parser


def _check_port(address: str, port: int) -> None:
    """Refuse a port that is taken, before Streamlit would fail less clearly (its range is checked at parse time)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise InputError(
                f"cannot serve on {address}:{port} ({exc.strerror or exc}).", "pass another --port, e.g. --port 8502."
            ) from None


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The `python -m streamlit run …` command line for these arguments."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless=true",
        f"--server.address={args.address}",
        f"--server.port={args.port}",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--global.developmentMode=false",
    ]


def prepare(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str], dict[str, str]]:
    """Validate the arguments; return them, the server command and its environment."""
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    if args.runs is not None:
        runs = args.runs.expanduser()
        if not runs.is_dir():
            raise InputError(f"--runs '{runs}' is not a folder.", "pass the folder `make demo` or your runs wrote to.")
        env[RUNS_ENV] = str(runs.resolve())
    else:
        env[RUNS_ENV] = str(Path(DEFAULT_RUNS).resolve())
    if args.storage:
        from hetcache.tuner.study_storage import check_storage, resolve_url

        check_storage(resolve_url(args.storage, Path.cwd()), read_only=True)  # the tuner's refusals, before serving
    env[STORAGE_ENV] = args.storage
    _check_port(args.address, args.port)
    return args, streamlit_command(args), env


def _main(argv: Sequence[str] | None) -> int:
    """Validate, say where the dashboard will be, then become the Streamlit server."""
    args, command, env = prepare(argv)
    print(f"hetcache dashboard: http://{args.address}:{args.port}/ (Ctrl+C stops it)", flush=True)
    os.execve(sys.executable, command, env)
    return 0  # not reached: exec replaced the process


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors exit with code 2 and one message."""
    return run_cli(_main, argv, prog="hetcache-dashboard")


if __name__ == "__main__":
    sys.exit(main())
