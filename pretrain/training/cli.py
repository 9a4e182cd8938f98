"""python tools/pretrain.py: pretrain a backbone with BYOL or SimSiam (optionally RIM and IFM), or the
supervised baseline, from a config and KEY VALUE overrides; the loop itself is pretrain/training/loop.py."""

from __future__ import annotations

import argparse

from pretrain.config import load_config
from pretrain.training.loop import PretrainRun
from rimifm.distributed import Distributed

EXAMPLES = """examples:
  python tools/pretrain.py --config synthetic_byol.yaml
  python tools/pretrain.py --config fmnist_cpu_byol.yaml DATA.ROOT /usr/share/datasets/fashion-mnist
  python tools/pretrain.py --config fmnist_cpu_byol.yaml RIM.ENABLED true IFM.ENABLED true SEED 1
  python tools/pretrain.py --config cifar10_byol.yaml DATA.ROOT datasets/cifar10 --print-config
  torchrun --nproc_per_node 4 tools/pretrain.py --config imagenet_byol.yaml DATA.ROOT /data/imagenet/train
"""


def train(cfg, config_name: str = "", resume: str | None = None) -> dict:
    """Run (or resume) one pretraining run; returns its record."""
    env = Distributed(cfg.TRAIN.DEVICE)
    try:
        return PretrainRun(cfg, config_name, env).run(resume)
    finally:
        env.close()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Pretrain a backbone with BYOL or SimSiam, optionally with RIM and IFM (or METHOD supervised, "
                    "the labelled baseline). Overrides are KEY VALUE pairs, e.g. RIM.ENABLED true IFM.WEIGHT 0.5; "
                    "every key is in pretrain/config.py. The run resumes from OUTPUT_DIR/checkpoints/last.pth when "
                    "it exists and ends with OUTPUT_DIR/record.json.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", help="YAML file, or a name in pretrain/configs/ (default: built-in defaults)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/checkpoints/last.pth)")
    p.add_argument("--print-config", action="store_true",
                   help="print the merged config (defaults, file, overrides) as YAML and exit; reads no data")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs")
    args = p.parse_args(argv)
    if "--print-config" in args.overrides:  # also accepted after the KEY VALUE pairs
        args.overrides = [x for x in args.overrides if x != "--print-config"]
        args.print_config = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config or None, args.overrides)
    if args.print_config:
        print(cfg.dump(), end="")
        return 0
    train(cfg, args.config, args.resume)
    return 0


def cli() -> None:
    """Console entry point."""
    from rimifm.errors import run_cli

    run_cli(main)
