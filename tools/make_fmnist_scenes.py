#!/usr/bin/env python
"""Compose the Fashion-MNIST scenes detection set: see synthetic/cli.py or --help."""

import sys
from pathlib import Path

# Run by path, Python puts tools/ first on sys.path, where tools/pretrain.py would shadow the `pretrain`
# package: put the checkout there instead (this also runs from a checkout that is not pip-installed).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from synthetic.cli import scenes_cli  # noqa: E402

if __name__ == "__main__":
    scenes_cli()
