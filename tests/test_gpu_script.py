"""benchmarks/gpu.sh runs end to end (--dry-run: every section on CPU at tiny sizes), so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    done = _run("--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record["complete"] and record["dry_run"]
    exact = record["exactness"]
    assert exact["max_abs_diff"] <= 1e-5 * exact["output_scale"]
    rows = record["partial_forward"]
    assert {r["offload"] for r in rows} == {False, True} and len(rows) == 6
    for row in rows:
        assert row["cache_bytes"] == row["plan_cache_bytes"]
        assert row["flops_speedup"] > 1 and row["speedup"] > 0 and row["partial_s"]["n"] == 2
    for row in record["memory"]:
        assert row["engine_cache_bytes"] == row["plan_cache_bytes"]
    offloaded = next(r for r in record["memory"] if r["offload"])
    assert offloaded["plan_host_bytes"] > 0
    run = record["whole_run"]
    for name in ("wan21-vace-1.3b-paper", "reference-psnr30"):
        assert len(run[name]["decisions"]) == run["steps"] and run[name]["speedup_flops"] >= 1
    assert record["profiler"]["overhead"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU exists")
def test_without_a_gpu_it_says_so_before_building_anything(tmp_path):
    out = tmp_path / "gpu.json"
    done = _run("--out", str(out))
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not out.exists()
