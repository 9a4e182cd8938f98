"""Pretrain a backbone: python tools/pretrain.py --config synthetic_byol.yaml [KEY VALUE ...]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pretrain.errors import run_cli  # noqa: E402
from pretrain.train import main  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
