#!/usr/bin/env bash
# The README's test command: set up .venv if needed, then run the whole test suite (one worker per core).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
# One pytest worker per core (pytest-xdist); pass -n 0 to run in one process.
exec .venv/bin/python -m pytest -n auto "$@"
