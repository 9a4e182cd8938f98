#!/usr/bin/env python
"""Pretrain a backbone: python tools/pretrain.py --config synthetic_byol.yaml [KEY VALUE ...]."""

import sys
from pathlib import Path

# Run by path, Python puts tools/ first on sys.path, where tools/pretrain.py would shadow the `pretrain`
# package: put the checkout there instead (this also runs from a checkout that is not pip-installed).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pretrain.training.cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
