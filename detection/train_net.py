#!/usr/bin/env python
"""Fine-tune and evaluate a detector on a converted backbone (MoCo's detection-transfer protocol).

A bare config name is looked up in detection/configs/. Trailing KEY VALUE pairs override config
keys. Every run writes OUTPUT_DIR/record.json (default OUTPUT_DIR:
outputs/detection/<config>[-<weights>]). Datasets live under $DETECTRON2_DATASETS (default
datasets/); the synthetic set under $RIMIFM_SYNTHETIC (default datasets/synthetic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.config import available_configs, resolve_config_path  # noqa: E402
from detection.engines import ENGINES, select_engine  # noqa: E402
from rimifm.errors import run_cli  # noqa: E402

EXAMPLES = """examples:
  python detection/train_net.py --config voc_r50.yaml --num-gpus 8 MODEL.WEIGHTS backbone.pkl
  python detection/train_net.py --config fmnist_scenes.yaml MODEL.WEIGHTS byol_tiny.pkl   # a CPU, minutes
  python detection/train_net.py --config fmnist_scenes.yaml MODEL.WEIGHTS ""              # from random init
  python detection/train_net.py --config synthetic_r18_fpn.yaml SOLVER.MAX_ITER 20
  python detection/train_net.py --config voc_r50.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "--config-file", dest="config", required=True, metavar="FILE",
                   help=f"YAML config: a path, or a name in detection/configs/ ({', '.join(available_configs())})")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="detectron2 (reference), torchvision, or auto: detectron2 when it imports (default)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine (default: 1)")
    p.add_argument("--num-machines", type=int, default=1, help="number of machines (default: 1)")
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine, 0..num-machines-1")
    p.add_argument("--dist-url", default="auto",
                   help="tcp://HOST:PORT of machine 0 for multi-machine runs (default: auto, a free local port)")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS, no training")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/last_checkpoint when there is one")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS backbone.pkl SOLVER.MAX_ITER 100")
    args = p.parse_args(argv)
    for name in ("num_gpus", "num_machines"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.machine_rank < args.num_machines:
        p.error("--machine-rank must be in 0..num-machines-1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Resolve the config and the engine, then let the engine train and/or evaluate."""
    args = parse_args(argv)
    resolve_config_path(args.config)  # a wrong name fails here, before any engine is imported
    args.engine, engine = select_engine(args.engine, args.config, args.opts)
    engine.run(args)
    return 0


def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
