"""Labelled train/val splits a classification evaluation reads, and the linear probe's augmented views."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pretrain.data.datasets import CIFARSource, ImageFolderSource
from pretrain.data.idx import IDXSource
from pretrain.data.views import ViewSpec, make_view, sample_rng, to_normalised_tensor
from rimifm.errors import UserError

DATASETS = ("synthetic", "imagefolder", "cifar10", "cifar100", "idx")


@dataclass
class EvalSplits:
    """Labelled train and val sources of one classification dataset."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    identity: str  # folder paths, for the cache key


def _folder(path: Path, option: str) -> ImageFolderSource:
    if not path.is_dir():
        raise UserError(f"dataset folder {path} does not exist; check {option}")
    return ImageFolderSource(path, require_labels=True)


def build_eval_splits(dataset: str, root: str | os.PathLike | None, train_dir: str | None = None,
                      val_dir: str | None = None) -> EvalSplits:
    """synthetic: ROOT/classification/{train,val}; imagefolder: --train-dir/--val-dir (default
    ROOT/train, ROOT/val); cifar10/100: the python batches under ROOT (train / test); idx: the MNIST
    family's IDX files under ROOT (train-* / t10k-*)."""
    if dataset not in DATASETS:
        raise UserError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "imagefolder":
        if not (train_dir and val_dir) and not root:
            raise UserError("--dataset imagefolder needs --root DIR (with train/ and val/) or --train-dir and --val-dir")
        tr = Path(train_dir) if train_dir else Path(root) / "train"
        va = Path(val_dir) if val_dir else Path(root) / "val"
        train = _folder(tr, "--train-dir" if train_dir else "--root (expected ROOT/train)")
        val = _folder(va, "--val-dir" if val_dir else "--root (expected ROOT/val)")
        if train.classes != val.classes:
            raise UserError(f"train folder {tr} and val folder {va} have different class folders "
                            f"({train.classes[:5]} vs {val.classes[:5]}); they must match")
        return EvalSplits(dataset, train, val, len(train.classes), f"{tr.resolve()}|{va.resolve()}")
    if not root:
        raise UserError(f"--dataset {dataset} needs --root DIR")
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"dataset root {base} does not exist; check --root")
    if dataset == "synthetic":
        tr, va = base / "classification" / "train", base / "classification" / "val"
        hint = (f"--root (expected {base}/classification/{{train,val}}; create the set with "
                f"`python tools/make_synthetic.py --out {base}`)")
        train, val = _folder(tr, hint), _folder(va, hint)
        return EvalSplits(dataset, train, val, len(train.classes), f"{tr.resolve()}|{va.resolve()}")
    if dataset == "idx":
        train, val = IDXSource(base, train=True, option="--root"), IDXSource(base, train=False, option="--root")
        n = max(len(train.classes), len(val.classes))
        return EvalSplits(dataset, train, val, n, f"{dataset}:{base.resolve()}")
    train = CIFARSource(base, dataset, train=True)
    val = CIFARSource(base, dataset, train=False)
    n = 100 if dataset == "cifar100" else 10
    return EvalSplits(dataset, train, val, n, f"{dataset}:{base.resolve()}")


class AugmentedDataset(Dataset):
    """Linear-probe training views: random resized crop + horizontal flip, RNG from (seed, epoch, index)."""

    def __init__(self, source: Dataset, size: int, mean, std, seed: int = 0, epoch: int = 0):
        self.source, self.mean, self.std, self.seed, self.epoch = source, tuple(mean), tuple(std), seed, epoch
        self.spec = ViewSpec(size=size, crop_min_scale=0.08, flip_prob=0.5, jitter_prob=0.0, gray_prob=0.0,
                             blur_prob=0.0, solarize_prob=0.0)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.source[index]
        view = make_view(img, self.spec, sample_rng(self.seed, self.epoch, index))
        return to_normalised_tensor(view, self.mean, self.std), label



__all__ = ["DATASETS", "EvalSplits", "build_eval_splits", "AugmentedDataset"]
