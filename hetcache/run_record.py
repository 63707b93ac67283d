"""The run record `run.json` (schema hetcache.run/v1): its one definition and its one reader.

`hetcache run` writes it (hetcache.runner) next to the clips it produced; the dashboard reads it with
`read_run_record`. Per clip it holds the engine stats, quality per region and the timing rounds; the summary holds
the FLOPs speedup, the wall-clock speedup as a median with min–max over interleaved rounds, and any warnings about
how far that wall-clock figure can be trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError

RUN_FILE = "run.json"
RUN_SCHEMA = "hetcache.run/v1"
RUN_FIX = "re-create it with `hetcache run ... --compare --out DIR` (make demo writes runs/demo/apply)."


def read_run_record(folder: str | Path) -> dict[str, Any]:
    """Read and check a run folder's run.json; every problem is an InputError naming the file and the fix."""
    path = Path(folder) / RUN_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"run file '{path}' does not exist.", RUN_FIX) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"run file '{path}' cannot be read ({exc}).", RUN_FIX) from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"run file '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "it is probably truncated or was written by something else.",
            RUN_FIX,
        ) from None
    schema = record.get("schema") if isinstance(record, dict) else None
    if schema != RUN_SCHEMA:
        raise InputError(
            f"'{path}' is not a hetcache run record (schema {schema!r}, expected {RUN_SCHEMA!r}).", RUN_FIX
        )
    clips = record.get("clips")
    if not isinstance(clips, list) or not clips or not all(isinstance(c, dict) and "clip" in c for c in clips):
        raise InputError(f"run file '{path}': field 'clips' must be a non-empty list of clip records.", RUN_FIX)
    return record
