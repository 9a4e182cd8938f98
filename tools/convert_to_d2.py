#!/usr/bin/env python
"""Convert a pretraining checkpoint (ours, MoCo, SimSiam, BYOL, ...) to detectron2's .pkl weights.

Example: python tools/convert_to_d2.py outputs/pretrain/byol/checkpoint.pth byol_r50.pkl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.convert import RESNET_LAYOUTS, convert_file  # noqa: E402
from pretrain.errors import run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint file (.pth/.pt/.tar) to read")
    p.add_argument("output", help=".pkl file to write (atomically)")
    p.add_argument("--target", action="store_true",
                   help="take the EMA/momentum branch (ours: target_backbone.) instead of the online backbone")
    p.add_argument("--prefix", default=None,
                   help="key prefix of the backbone, overriding detection (e.g. module.encoder_q.; '' = none)")
    p.add_argument("--depth", type=int, choices=sorted(RESNET_LAYOUTS), default=None,
                   help="expected ResNet depth (default: from the checkpoint or inferred from its keys)")
    p.add_argument("--unsafe-legacy-pickle", action="store_true",
                   help="load with weights_only=False; only for files from a source you trust")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert INPUT to OUTPUT and print a one-line summary."""
    args = parse_args(argv)
    conv = convert_file(args.input, args.output, target=args.target, prefix=args.prefix, depth=args.depth,
                        unsafe_legacy_pickle=args.unsafe_legacy_pickle)
    print(f"converted {args.input}: {conv.summary(args.output)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
