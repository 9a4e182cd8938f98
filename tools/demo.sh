#!/usr/bin/env bash
# The README's demo command: set up .venv if needed, make the synthetic benchmark, pretrain on it.
# Safe to run again: finished steps are reused (the data is kept, a finished run resumes as done).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
exec bash tools/run_pretrain.sh synthetic_byol.yaml "$@"
