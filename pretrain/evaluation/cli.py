"""Evaluate a frozen backbone by kNN or linear probe on a labelled classification dataset.

Usage: python tools/eval_classification.py CHECKPOINT --dataset synthetic|imagefolder|cifar10|cifar100
       --root DIR --protocol knn|linear [options]     (CHECKPOINT `none` with --random-init)
"""

from __future__ import annotations

import argparse

from pretrain.evaluation.datasets import DATASETS
from pretrain.evaluation.run import run_evaluation
from rimifm.cli import ArgumentParser
from rimifm.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the classification evaluation."""
    p = ArgumentParser(description="kNN / linear-probe evaluation of a pretrained (or random) backbone.")
    p.add_argument("checkpoint", help="our .pth, a third-party ResNet checkpoint, a detectron2 .pkl, "
                                      "or `none` with --random-init")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", default=None, help="dataset root (imagefolder: holds train/ and val/)")
    p.add_argument("--train-dir", default=None, help="imagefolder: labelled training folder")
    p.add_argument("--val-dir", default=None, help="imagefolder: labelled validation folder")
    p.add_argument("--protocol", required=True, choices=("knn", "linear"))
    p.add_argument("--k", type=int, default=200, help="kNN neighbours (default 200)")
    p.add_argument("--temperature", type=float, default=0.1, help="kNN vote temperature (default 0.1)")
    p.add_argument("--epochs", type=int, default=100, help="linear probe epochs (default 100)")
    p.add_argument("--lr", type=float, default=0.1, help="linear probe base LR (cosine schedule)")
    p.add_argument("--optimizer", choices=("sgd", "lars"), default="sgd",
                   help="momentum 0.9 either way; LARS (trust 0.001) needs a much larger --lr")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--augment", action="store_true",
                   help="linear: recompute augmented (crop+flip) train features each epoch (slower, standard)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the checkpoint's DATA.IMAGE_SIZE, else 32)")
    p.add_argument("--target", action="store_true", help="evaluate the EMA target backbone (BYOL)")
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone")
    p.add_argument("--backbone", default="resnet18", help="with --random-init: resnet18|resnet34|resnet50")
    p.add_argument("--cifar-stem", action="store_true", help="with --random-init: 3x3 stem, no max-pool")
    p.add_argument("--out", default=None, help="output folder (default outputs/eval/<name>-<protocol>-<dataset>)")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default <out>/feature_cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--unsafe-legacy-pickle", action="store_true",
                   help="allow checkpoints pickling Python objects (trusted files only)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the evaluation, print the summary and record path."""
    args = build_parser().parse_args(argv)
    run_evaluation(vars(args))
    return 0


def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
