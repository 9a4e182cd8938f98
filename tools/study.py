#!/usr/bin/env python
"""Do RIM and IFM help? A study of one recipe over seeds: see demo/study.py or --help."""

import sys
from pathlib import Path

# Run by path, Python puts tools/ first on sys.path, where tools/pretrain.py would shadow the `pretrain`
# package: put the checkout there instead (this also runs from a checkout that is not pip-installed).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from demo.study_cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
