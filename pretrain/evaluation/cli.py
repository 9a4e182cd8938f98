"""Evaluate a frozen backbone by kNN or linear probe on a labelled classification dataset.

Usage: python tools/eval_classification.py CHECKPOINT --dataset synthetic|imagefolder|cifar10|cifar100|idx
       --root DIR --protocol knn|linear|linear-cached [options]     (CHECKPOINT `none` with --random-init)
"""

from __future__ import annotations

import argparse

from pretrain.evaluation.datasets import DATASETS
from pretrain.evaluation.recipes import RECIPES
from pretrain.evaluation.run import run_evaluation
from pretrain.method.models import FEATURE_DIMS
from rimifm.cli import ArgumentParser
from rimifm.errors import run_cli

EXAMPLES = """examples:
  # kNN (k=20, T=0.1) of a Fashion-MNIST run, on the 10k test images with the 60k training images as the bank
  python tools/eval_classification.py outputs/pretrain/fmnist_cpu_byol-s0/checkpoints/last.pth \\
      --dataset idx --root /usr/share/datasets/fashion-mnist --protocol knn --k 20
  # the same for the baselines: a random backbone built like the recipe, and the raw pixels
  python tools/eval_classification.py none --random-init --config fmnist_cpu_byol.yaml \\
      --dataset idx --root /usr/share/datasets/fashion-mnist --protocol knn --k 20
  python tools/eval_classification.py none --raw-pixels --config fmnist_cpu_byol.yaml \\
      --dataset idx --root /usr/share/datasets/fashion-mnist --protocol knn --k 20
  # the published linear protocol (solo-learn's recipe) on CIFAR-10
  python tools/eval_classification.py last.pth --dataset cifar10 --root datasets/cifar10 --protocol linear
"""


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the classification evaluation."""
    p = ArgumentParser(description="kNN / linear-probe evaluation of a pretrained (or random) backbone.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="our .pth, a third-party ResNet checkpoint, a detectron2 .pkl, "
                                      "or `none` with --random-init")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", default=None, help="dataset root (imagefolder: holds train/ and val/; idx: the four "
                                                "MNIST/Fashion-MNIST/KMNIST IDX files, train = train-*, val = t10k-*)")
    p.add_argument("--train-dir", default=None, help="imagefolder: labelled training folder")
    p.add_argument("--val-dir", default=None, help="imagefolder: labelled validation folder")
    p.add_argument("--protocol", required=True, choices=("knn", "linear", "linear-cached"),
                   help="knn; linear: the published offline protocol of --recipe (augmented views through the "
                        "frozen backbone every epoch); linear-cached: fast probe on fixed centre-crop features "
                        "(not a published protocol)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="linear: solo-learn (default for cifar10/cifar100/idx/synthetic), moco (default for "
                        "imagefolder; SGD lr 30, steps 60/80, 100 epochs) or simsiam (LARS, batch 4096, 90 epochs)")
    p.add_argument("--dataset-name", default=None, metavar="KEY",
                   help="the dataset's name in the record and the tables (default: --dataset), e.g. imagenet100 for "
                        "an imagefolder copy of ImageNet-100, so that the published rows of that key sit beside it")
    p.add_argument("--report", choices=("best", "last"), default=None,
                   help="linear: the epoch whose top-1 is reported (default: the recipe's own; moco and simsiam "
                        "validate every epoch and report the best, solo-learn the last)")
    p.add_argument("--k", type=int, default=200, help="kNN neighbours (default 200)")
    p.add_argument("--temperature", type=float, default=0.1, help="kNN vote temperature (default 0.1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="linear: replaces the recipe's (recorded as <recipe>-modified); linear-cached: default 100")
    p.add_argument("--lr", type=float, default=None, help="linear: replaces the recipe's; linear-cached: default 0.1")
    p.add_argument("--optimizer", choices=("sgd", "lars"), default=None,
                   help="linear: replaces the recipe's; linear-cached: default sgd (LARS needs a much larger --lr)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="linear: replaces the recipe's; also the feature-extraction batch (default 256)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--recompute-bn", action="store_true",
                   help="re-estimate the backbone's BN statistics on clean training images first (precise BN), "
                        "e.g. for +RIM backbones whose statistics come from masked images")
    p.add_argument("--recompute-bn-images", type=int, default=10000,
                   help="training images for --recompute-bn (default 10000, or all if fewer)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the checkpoint's DATA.IMAGE_SIZE, else 32)")
    p.add_argument("--target", action="store_true", help="evaluate the EMA target backbone (BYOL)")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate a randomly initialised backbone (CHECKPOINT none; needs --backbone or --config)")
    p.add_argument("--raw-pixels", action="store_true",
                   help="evaluate the pixels themselves (CHECKPOINT none): the normalised evaluation view, flattened")
    p.add_argument("--config", default=None,
                   help="with --random-init / --raw-pixels: a pretraining config (file or name in pretrain/configs/) "
                        "whose backbone, stem, image size and normalisation the baseline takes, e.g. fmnist_cpu_byol.yaml")
    p.add_argument("--backbone", default=None, choices=sorted(FEATURE_DIMS),
                   help="with --random-init: the network (overrides --config's MODEL.BACKBONE)")
    p.add_argument("--cifar-stem", action="store_true", help="with --random-init: 3x3 stride-1 stem, no max-pool")
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
