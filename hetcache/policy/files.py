"""Policy files on disk: the one reader of their JSON, and `load_policy` (a path, a shipped name or a dict)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import PolicyError
from .core import Policy
from .reader import policy_from_dict
from .sections import SCHEMA_PREFIX

PEEK_BYTES = 512
SCHEMA_MARK = re.compile(rb'"schema"\s*:\s*"' + re.escape(SCHEMA_PREFIX.encode()))


def load_policy(source: str | os.PathLike | dict | Policy) -> Policy:
    """Load a policy from a path, a shipped policy name, a dict, or return a Policy unchanged."""
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        return policy_from_dict(source, origin="policy dict")
    if not isinstance(source, (str, os.PathLike)):
        raise PolicyError(
            f"a policy must be a file path, a shipped policy name, a dict or a Policy, got {type(source).__name__}.",
            "pass e.g. 'policy.json' or a name listed by `hetcache policies`.",
        )
    text_source = os.fspath(source)
    path = Path(text_source)
    if path.is_file():
        return load_policy_file(path)
    looks_like_path = path.suffix == ".json" or os.sep in text_source
    if looks_like_path:
        raise PolicyError(f"policy file '{text_source}' does not exist.", "check the path, or pass a shipped name.")
    from hetcache import policies

    if text_source in policies.names():
        return load_policy_file(policies.policy_path(text_source))
    raise PolicyError(
        f"unknown policy '{text_source}': not a file and not a shipped policy.",
        f"pass a policy JSON path or one of: {', '.join(policies.names())}.",
    )


def read_policy_json(path: str | os.PathLike) -> Any:
    """The JSON content of a policy file, not yet validated; PolicyError names the file if it is unreadable or not JSON.

    The one reader of policy files: `load_policy`, the shipped-policy index, the tuner's export checks and the
    benchmarks all read through it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file '{path}' cannot be read ({exc}).", "check the file permissions.") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(
            f"policy file '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
            "fix the JSON or re-export the policy with hetcache-tune.",
        ) from exc


def load_policy_file(path: str | os.PathLike) -> Policy:
    """Read and validate the policy file at `path`."""
    return policy_from_dict(read_policy_json(path), origin=f"policy file '{path}'")


def is_policy_file(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a policy file: a `.json` whose first bytes hold `"schema": "hetcache.policy/v…`.

    Only the start of the file is read, so that folders of large JSON outputs are scanned cheaply; every hetcache
    writer puts `schema` first. Whether the file is a valid policy is for `load_policy` to say.
    """
    path = Path(path)
    if path.suffix != ".json":
        return False
    try:
        with path.open("rb") as handle:
            return SCHEMA_MARK.search(handle.read(PEEK_BYTES)) is not None
    except OSError:
        return False
