"""One distribution, one namespace: a built wheel installs profiler/, tuner/, dashboard/, policies/ under hetcache."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return next(out.glob("hetcache-*.whl"))


def test_wheel_maps_every_part_into_the_hetcache_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("hetcache-")}
    assert top == {"hetcache"}  # nothing generic such as `profiler` or `tuner` lands in site-packages
    for module in ("profiler/__init__.py", "tuner/__init__.py", "dashboard/__init__.py", "policies/__init__.py"):
        assert f"hetcache/{module}" in names
    assert "hetcache/policies/wan21-vace-1.3b-paper.json" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("hetcache-profile", "hetcache-tune", "hetcache-dashboard", "hetcache-run"):
        assert f"{script} = " in scripts


def test_normal_install_imports_every_part(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    code = (
        "import hetcache, hetcache.profiler, hetcache.tuner, hetcache.dashboard, hetcache.policies;"
        "from hetcache import policies; print(hetcache.__file__); print(len(policies.names()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr
    location, count = result.stdout.split()
    assert location.startswith(str(target)) and int(count) >= 2


def test_editable_install_resolves_to_the_repository():
    import hetcache.policies
    import hetcache.profiler

    assert Path(hetcache.profiler.__file__).resolve().parent == ROOT / "profiler"
    assert Path(hetcache.policies.__file__).resolve().parent == ROOT / "policies"
