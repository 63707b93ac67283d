#!/usr/bin/env bash
# The prepared GPU run: hetcache at Wan2.1-VACE-1.3B scale (random weights, no hub), one JSON out.
#
#   bash benchmarks/gpu.sh                     # one H100/H200, about 6 minutes -> benchmarks/results/gpu.json
#   bash benchmarks/gpu.sh --dry-run --out /tmp/gpu.json   # every section on CPU at tiny sizes (under a minute)
#
# PYTHON selects the interpreter (default: the project's .venv, else python3); other flags go to gpu_run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
fi
exec "$PYTHON" benchmarks/gpu_run.py "$@"
