"""Deterministic synthetic benchmark: the project's embedded default dataset (nothing is downloaded).

One call to `generate` writes, into one folder:

* ``pretrain/`` - unlabeled images (a flat folder) for self-supervised pretraining;
* ``classification/{train,val}/<class>/`` - an ImageFolder split for kNN / linear evaluation;
* ``detection/VOC2007/`` - a PASCAL-VOC style detection set, and ``detection/annotations/`` - the
  same boxes in COCO format;
* ``meta.json`` - seed and sizes, written last (its presence marks a complete set).

Every image shows textured, rotated shapes of six classes on a cluttered background (random lines and
blobs over a gradient), sometimes occluded. The class is carried by the outline only: colours,
textures, sizes and positions are drawn independently of it.
Each image depends only on (seed, split, index), and files are written with fixed encoder options,
so the same seed and sizes give byte-identical files on a given software stack.

This module holds `generate` and the metadata API; the drawing is in synthetic.shapes (outlines),
synthetic.painting (pixels) and synthetic.scenes (whole images), the annotation files in
synthetic.annotations, and the format's name, version and classes in synthetic.identity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rimifm.errors import UserError
from synthetic.annotations import coco_dataset, voc_xml
from synthetic.folders import GeneratedFormat, check_seed, json_text, write_text
from synthetic.identity import CLASSES, FORMAT, VERSION
from synthetic.scenes import _render_detection, _render_single

DEFAULT_SIZES: dict[str, int] = {
    "pretrain_images": 4000,
    "cls_train_per_class": 100,
    "cls_val_per_class": 50,
    "det_trainval": 300,
    "det_test": 150,
    "image_size": 32,
    "det_image_size": 128,
}

# Smallest and largest accepted value of each size option.
_SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "pretrain_images": (1, 10_000_000),
    "cls_train_per_class": (1, 1_000_000),
    "cls_val_per_class": (1, 1_000_000),
    "det_trainval": (1, 999_998),
    "det_test": (1, 999_998),
    "image_size": (16, 1024),
    "det_image_size": (32, 2048),
}

# Stable stream codes: an image's random stream is keyed by (tag, seed, split code, index...).
_SEED_TAG = 0x5EED_51
_SPLIT_CODES = {"pretrain": 1, "cls_train": 2, "cls_val": 3, "det_trainval": 4, "det_test": 5}

_PNG_OPTIONS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}
_JPEG_OPTIONS: dict[str, Any] = {"format": "JPEG", "quality": 95, "subsampling": 0,
                                 "optimize": False, "progressive": False}

SYNTHETIC = GeneratedFormat(
    format=FORMAT, version=VERSION, what="synthetic set", command="python tools/make_synthetic.py --out {root}",
    classes=CLASSES, defaults=DEFAULT_SIZES, limits=_SIZE_LIMITS,
    folders=("pretrain", "classification/train", "classification/val", "detection/VOC2007",
             "detection/annotations"),
    layout=frozenset({"pretrain", "classification", "detection"}))


# --------------------------------------------------------------------------------------------
# Random streams and writing a set
# --------------------------------------------------------------------------------------------

def _rng(seed: int, split: str, *index: int) -> np.random.Generator:
    """The random stream of one image: a function of (seed, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([_SEED_TAG, seed, _SPLIT_CODES[split], *index]))


def _pretrain_class(rng: np.random.Generator) -> int:
    """The class of a pretraining image: the first draw of its random stream."""
    return int(rng.integers(len(CLASSES)))


def _write_all(root: Path, seed: int, sizes: dict[str, int]) -> None:
    """Generate the whole set into `root` (an empty folder); generate() adds meta.json last."""
    size, det_size = sizes["image_size"], sizes["det_image_size"]
    pre = root / "pretrain"
    pre.mkdir(parents=True)
    for i in range(sizes["pretrain_images"]):
        rng = _rng(seed, "pretrain", i)
        _render_single(rng, size, _pretrain_class(rng)).save(pre / f"{i:06d}.png", **_PNG_OPTIONS)
    for split, count in (("train", sizes["cls_train_per_class"]), ("val", sizes["cls_val_per_class"])):
        for c, name in enumerate(CLASSES):
            folder = root / "classification" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                img = _render_single(_rng(seed, f"cls_{split}", c, i), size, c)
                img.save(folder / f"{i:06d}.png", **_PNG_OPTIONS)
    voc = root / "detection" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    (root / "detection" / "annotations").mkdir(parents=True)
    next_id = 1
    for split, count in (("trainval", sizes["det_trainval"]), ("test", sizes["det_test"])):
        records = []
        for i in range(count):
            image_id = f"{next_id:06d}"
            next_id += 1
            img, objects = _render_detection(_rng(seed, f"det_{split}", i), det_size)
            img.save(voc / "JPEGImages" / f"{image_id}.jpg", **_JPEG_OPTIONS)
            write_text(voc / "Annotations" / f"{image_id}.xml", voc_xml(image_id, det_size, objects, FORMAT))
            records.append((image_id, objects))
        write_text(voc / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{r[0]}\n" for r in records))
        write_text(root / "detection" / "annotations" / f"instances_{split}.json",
                    json_text(coco_dataset(split, det_size, records, CLASSES, FORMAT, "shape", VERSION)))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _resolve_sizes(sizes: dict[str, Any]) -> dict[str, int]:
    """Defaults overridden by `sizes` (None = default), validated."""
    out = SYNTHETIC.resolve_sizes(sizes)
    if out["det_trainval"] + out["det_test"] > 999_999:
        raise UserError("det_trainval + det_test must be at most 999999 (six-digit image ids)")
    return out


def pretrain_classes(seed: int, count: int) -> list[int]:
    """Class index of each of the first `count` pretraining images of a set made with `seed`.

    Pretraining images are unlabeled on disk; their classes exist only for diagnostics such as the
    supervised reference in benchmarks/synthetic_supervised.py (never for pretraining itself).
    """
    seed = check_seed(seed)
    return [_pretrain_class(_rng(seed, "pretrain", i)) for i in range(count)]


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and validate `out_dir/meta.json` of a generated set; UserError if missing or not valid."""
    return SYNTHETIC.read_meta(out_dir)


def is_complete(out_dir: str | os.PathLike) -> bool:
    """True when `out_dir` holds a finished synthetic set (valid meta.json, written last)."""
    return SYNTHETIC.is_complete(out_dir)


def generate(out_dir: str | os.PathLike, seed: int = 0, force: bool = False, **sizes: int) -> Path:
    """Create the synthetic set in `out_dir` (sizes default to DEFAULT_SIZES) and return its path.

    Everything is written to a temporary sibling folder and renamed into place at the end, so an
    interrupted run never leaves a half-written set. An existing complete set with the same seed
    and sizes is reused untouched; any other existing content needs `force=True` to be replaced
    (synthetic.folders).
    """
    seed = check_seed(seed)
    resolved = _resolve_sizes(sizes)
    return SYNTHETIC.generate(out_dir, seed, resolved, lambda root: _write_all(root, seed, resolved), force=force)
