#!/usr/bin/env bash
# The README's demo command: set up .venv if needed, then the whole chain on the synthetic default
# (data -> pretrain base/+RIM/+IFM/+RIM+IFM -> kNN and linear -> convert -> detection -> tables).
# Safe to run again: finished steps are reused. Options go to tools/demo.py (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
exec .venv/bin/python tools/demo.py "$@"
