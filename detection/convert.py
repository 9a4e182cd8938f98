"""Convert a self-supervised ResNet checkpoint (ours, MoCo, SimSiam, BYOL, solo-learn...) to detectron2's
.pkl weights: load safely, find the backbone, rename and validate its tensors, write atomically.

The naming and layout detection live in rimifm.resnet_weights (classification evaluation reads the same
checkpoints); this module is the file-to-file step behind tools/convert_to_d2.py.
"""

from __future__ import annotations

import argparse
import os

from rimifm.d2_pkl import save_d2_pkl
from rimifm.errors import run_cli
from rimifm.io import load_checkpoint
from rimifm.resnet_weights import RESNET_LAYOUTS, Conversion, convert_checkpoint

__all__ = ["RESNET_LAYOUTS", "Conversion", "convert_file", "main"]


def convert_file(input_path: str | os.PathLike, output_path: str | os.PathLike, *, target: bool = False,
                 prefix: str | None = None, depth: int | None = None,
                 unsafe_legacy_pickle: bool = False) -> Conversion:
    """Load, convert, validate and write; nothing is written unless every check passes."""
    ckpt = load_checkpoint(input_path, unsafe_legacy_pickle=unsafe_legacy_pickle)
    conv = convert_checkpoint(ckpt, target=target, prefix=prefix, depth=depth)
    save_d2_pkl(conv.model, output_path, arch=conv.arch)
    return conv


EXAMPLES = """examples:
  python tools/convert_to_d2.py outputs/pretrain/cifar10_byol-s0/checkpoints/last.pth byol_r18.pkl
  python tools/convert_to_d2.py outputs/pretrain/fmnist_cpu_byol-s0/checkpoints/last.pth byol_tiny.pkl --target
  python tools/convert_to_d2.py moco_v2_800ep_pretrain.pth.tar moco_r50.pkl     # MoCo's, found by its prefix
  python tools/convert_to_d2.py solo_byol.pth solo_r18.pkl --prefix backbone. --depth 18
"""

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    """python tools/convert_to_d2.py INPUT OUTPUT: convert INPUT to OUTPUT and print a one-line summary."""
    args = parse_args(argv)
    conv = convert_file(args.input, args.output, target=args.target, prefix=args.prefix, depth=args.depth,
                        unsafe_legacy_pickle=args.unsafe_legacy_pickle)
    print(f"converted {args.input}: {conv.summary(args.output)}")
    return 0



def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
