#!/usr/bin/env python
"""Convert a pretraining checkpoint (ours, MoCo, SimSiam, BYOL, ...) to detectron2's .pkl weights.

Example: python tools/convert_to_d2.py outputs/pretrain/byol/checkpoints/last.pth byol_r18.pkl
"""

import sys
from pathlib import Path

# Run by path, Python puts tools/ first on sys.path, where tools/pretrain.py would shadow the `pretrain`
# package: put the checkout there instead (this also runs from a checkout that is not pip-installed).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from detection.convert import cli  # noqa: E402

if __name__ == "__main__":
    cli()
