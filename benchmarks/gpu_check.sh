#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh [--dry-run] [--workers N] [--batch B] [--skip tests throughput resume detection]
#   One short check of every GPU path (at most about 8 minutes on one GPU), ending in one table of
#   check / figure / target / PASS-FAIL; exit 0 when nothing failed. --dry-run: what a CPU can run, at a
#   small size (1-3 minutes). The logic is in benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
elif [[ " $* " != *" --dry-run "* && " $* " != *" -h "* && " $* " != *" --help "* ]]; then
    echo "no GPU is present (no NVIDIA driver): nothing to check here (--dry-run runs the CPU-runnable parts at a small size)"
    exit 2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
