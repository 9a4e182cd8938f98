"""Datasets: ImageFolder (labelled or a flat folder), CIFAR-10/100 and the MNIST family (IDX files) from a
local folder, the synthetic set.

Every source yields (PIL image, label) with label -1 when unlabeled. Nothing is ever downloaded.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler, Subset

from pretrain.data.idx import IDXSource
from pretrain.data.views import ViewSpec, eval_transform, make_view, sample_rng, to_normalised_tensor
from rimifm.errors import UserError
from synthetic.generator import read_meta

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageFolderSource(Dataset):
    """A folder of images: `root/<class>/*.jpg` (labelled) or `root/*.jpg` (unlabeled, flat).

    Files are listed once, sorted, so indices are stable across runs and machines.
    """

    def __init__(self, root: str | os.PathLike, require_labels: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset folder {self.root} does not exist; check DATA.ROOT (or the path given)")
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.samples: list[tuple[str, int]] = []
        self.classes: list[str] = []
        if class_dirs:
            for label, d in enumerate(class_dirs):
                files = sorted(str(p) for p in d.rglob("*") if p.is_file() and _is_image(p.name))
                self.samples += [(f, label) for f in files]
            self.classes = [d.name for d in class_dirs]
        if not self.samples:
            if require_labels:
                raise UserError(f"dataset folder {self.root} has no labelled images: expected "
                                f"{self.root}/<class>/<image> (ImageFolder layout)")
            files = sorted(str(p) for p in self.root.iterdir() if p.is_file() and _is_image(p.name))
            self.samples = [(f, -1) for f in files]
            self.classes = []
        if not self.samples:
            raise UserError(f"dataset folder {self.root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), label
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}; remove or replace the file") from None

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


class CIFARSource(Dataset):
    """CIFAR-10/100 in the standard python (pickle) format from a local folder; never downloads.

    `root` may be the folder holding `cifar-10-batches-py` / `cifar-100-python` or that folder itself.
    """

    def __init__(self, root: str | os.PathLike, name: str = "cifar10", train: bool = True):
        folder, train_files, test_files, label_key = _CIFAR_FILES[name]
        base = Path(root)
        if (base / folder).is_dir():
            base = base / folder
        if not base.is_dir():
            raise UserError(f"{name} folder {base} does not exist; put the python version of {name} "
                            f"({folder}/) under DATA.ROOT (this tool never downloads datasets)")
        images, labels = [], []
        for fname in train_files if train else test_files:
            path = base / fname
            if not path.is_file():
                raise UserError(f"{name}: missing file {path}; expected the python version of {name} in {base}")
            try:
                with open(path, "rb") as fh:
                    entry = pickle.load(fh, encoding="bytes")
                images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels += list(entry[label_key])
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
                raise UserError(f"{name}: {path} is not a valid CIFAR batch file ({exc})") from None
        self.data = np.concatenate(images).transpose(0, 2, 3, 1)
        self.targets = labels
        self.classes = [str(i) for i in range(max(labels) + 1)]

    labelled = True

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index]), int(self.targets[index])

    @property
    def labels(self) -> list[int]:
        return list(self.targets)


@dataclass
class Splits:
    """The sources a pretraining run uses: images to pretrain on, and optional labelled kNN splits."""

    train: Dataset
    knn_train: Dataset | None
    knn_val: Dataset | None


def subset(source: Dataset, indices: Sequence[int]) -> Dataset:
    """The images `indices` of a source: a copy of the same class over those entries of its contents (images,
    targets, file list), so its in-memory fast paths stay; torch's Subset for any other dataset."""
    attrs = [a for a in ("images", "data", "targets", "samples") if hasattr(source, a)]
    if not attrs:
        return Subset(source, list(indices))
    out = copy.copy(source)
    for attr in attrs:
        value = getattr(source, attr)
        setattr(out, attr, value[np.asarray(indices, dtype=np.int64)] if isinstance(value, np.ndarray)
                else [value[i] for i in indices])
    return out


def first_images(source: Dataset, n: int) -> Dataset:
    """The first `n` images of a source (DATA.LIMIT; all when n is 0)."""
    return source if n <= 0 or n >= len(source) else subset(source, range(n))


def source_array(source) -> np.ndarray | None:
    """The in-memory uint8 images of a source, (N, H, W) grey or (N, H, W, C), when it keeps them with their
    `targets` (IDX, CIFAR)."""
    if not hasattr(source, "targets"):
        return None
    for attr in ("images", "data"):
        arr = getattr(source, attr, None)
        if isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim in (3, 4):
            return arr
    return None


def array_tensor(array: np.ndarray, index: int) -> torch.Tensor:
    """One in-memory image as a writable uint8 (C, H, W) tensor (grey: one channel)."""
    a = array[index]
    return torch.from_numpy(np.array(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)))


def build_splits(cfg) -> Splits:
    """Resolve DATA.DATASET / DATA.ROOT into sources, with clear errors for missing data; DATA.LIMIT shortens
    the images pretraining sees, not the labelled kNN splits."""
    splits = _build_splits(cfg)
    splits.train = first_images(splits.train, cfg.DATA.LIMIT)
    return splits


def _build_splits(cfg) -> Splits:
    d = cfg.DATA
    root = Path(d.ROOT)
    if d.DATASET == "synthetic":
        read_meta(root)  # missing, incomplete or another generator version: one error with the command to fix it
        return Splits(ImageFolderSource(root / "pretrain"),
                      ImageFolderSource(root / "classification" / "train", require_labels=True),
                      ImageFolderSource(root / "classification" / "val", require_labels=True))
    if d.DATASET in _CIFAR_FILES:
        train = CIFARSource(root, d.DATASET, train=True)
        return Splits(train, train, CIFARSource(root, d.DATASET, train=False))
    if d.DATASET == "idx":  # MNIST / Fashion-MNIST / KMNIST: train files to pretrain on, t10k for the kNN val
        train = IDXSource(root, train=True)
        return Splits(train, train, IDXSource(root, train=False))
    train = ImageFolderSource(root)
    knn_train = ImageFolderSource(d.KNN_TRAIN, require_labels=True) if d.KNN_TRAIN else None
    knn_val = ImageFolderSource(d.KNN_VAL, require_labels=True) if d.KNN_VAL else None
    if knn_val is not None and knn_train is None:
        knn_train = train if train.labelled else None
        if knn_train is None:
            raise UserError("DATA.KNN_VAL is set but the training folder is unlabeled: also set DATA.KNN_TRAIN")
    return Splits(train, knn_train, knn_val)


class TwoViewDataset(Dataset):
    """Two augmented views per image; parameters drawn from an RNG keyed by (seed, epoch, index)."""

    def __init__(self, source: Dataset, specs: tuple[ViewSpec, ViewSpec], mean, std, seed: int = 0,
                 with_labels: bool = False):
        self.source = source
        self.specs = specs
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.epoch = 0
        self.with_labels = with_labels  # (v1, v2, label) instead of (v1, v2); label -1 when unlabeled

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple:
        img, label = self.source[index]
        rng = sample_rng(self.seed, self.epoch, index)
        v1 = to_normalised_tensor(make_view(img, self.specs[0], rng), self.mean, self.std)
        v2 = to_normalised_tensor(make_view(img, self.specs[1], rng), self.mean, self.std)
        return (v1, v2, label) if self.with_labels else (v1, v2)

    def to_device(self, views, device: torch.device) -> torch.Tensor:
        """A collated batch of one view, as the model takes it, on `device` (DATA.VIEWS device finishes it there)."""
        return views.to(device, non_blocking=True)


class EvalDataset(Dataset):
    """Deterministic (tensor, label) pairs for feature extraction (kNN, linear probe).

    In-memory images already at the evaluation size (Fashion-MNIST at 28 px) skip PIL: the evaluation view
    of such an image is the image itself, so the tensor is the same, made faster.
    """

    def __init__(self, source: Dataset, size: int, mean, std):
        self.source, self.size, self.mean, self.std = source, size, tuple(mean), tuple(std)
        self.array = source_array(source)
        if self.array is not None and self.array.shape[1:3] != (size, size):
            self.array = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.array is not None:
            x = TF.to_dtype(array_tensor(self.array, index), torch.float32, scale=True)
            x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
            return TF.normalize(x, list(self.mean), list(self.std)), int(self.source.targets[index])
        img, label = self.source[index]
        return eval_transform(img, self.size, self.mean, self.std), label


class EpochSampler(Sampler[int]):
    """Shuffled indices of one epoch for one process, able to start mid-epoch (exact resume).

    The permutation depends only on (seed, epoch); each process takes a strided share of the
    batches that all processes can complete (drop-last semantics), so every rank runs the same
    number of steps.
    """

    def __init__(self, size: int, batch_per_rank: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.size, self.batch, self.rank, self.world, self.seed = size, batch_per_rank, rank, world, seed
        self.epoch = 0
        self.start_step = 0
        if self.steps_per_epoch() < 1:
            raise UserError(f"the dataset has {size} images, fewer than one global batch of "
                            f"{batch_per_rank * world}; lower DATA.BATCH_SIZE or add images")

    def steps_per_epoch(self) -> int:
        return self.size // (self.batch * self.world)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _indices(self) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 7]))
        order = rng.permutation(self.size)
        global_batch = self.batch * self.world
        steps = self.steps_per_epoch()
        order = order[: steps * global_batch].reshape(steps, self.world, self.batch)
        return order[self.start_step:, self.rank].reshape(-1)

    def __iter__(self):
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start_step) * self.batch
