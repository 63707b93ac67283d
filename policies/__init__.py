"""Policy files shipped with hetcache, listed and located by name (`hetcache.policies`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Names of the shipped policies (file names without `.json`), sorted."""
    return sorted(p.stem for p in _folder().glob("*.json"))


def policy_path(name: str) -> Path:
    """Path of the shipped policy `name`."""
    return _folder() / f"{name}.json"


def index() -> list[dict[str, str]]:
    """One row per shipped policy: name, model class, source and description, read from the files."""
    from hetcache.policy import read_policy_json

    rows = []
    for name in names():
        data = read_policy_json(policy_path(name))
        rows.append(
            {
                "name": name,
                "model": (data.get("model") or {}).get("class", "any"),
                "source": (data.get("provenance") or {}).get("source", ""),
                "description": data.get("description", ""),
            }
        )
    return rows


def load(name: str):
    """Load the shipped policy `name` as a `hetcache.policy.Policy`."""
    from hetcache.policy import load_policy

    return load_policy(name)
