"""Fashion-MNIST scenes: a detection set of real object images, small enough for a CPU.

Each canvas (default 112 px, black like Fashion-MNIST's own background) holds one to several
Fashion-MNIST items, each resized to a random side and placed at a random spot; items may touch and
overlap a little (at most `MAX_OVERLAP` of the smaller box), and overlapping pixels keep the brighter
value. Every item gets its class (the 10 Fashion-MNIST classes) and its tight box: the bounding box of
the resized item's pixels brighter than `INK` (about 10% grey), not of its 28 px frame.

No leakage: the trainval scenes take their items from the IDX training split only, the test scenes
from the t10k split only. `sources.json` says which item (split and index) each object is.

Written in the VOC layout the suite reads (`VOC2007/{JPEGImages,Annotations,ImageSets/Main}`), the
same boxes as COCO JSON (`annotations/instances_{trainval,test}.json`), and `meta.json` last. Every
scene depends only on (seed, split, index) and the IDX files (their fingerprint is in meta.json), and
files are written with fixed encoder options, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rimifm.errors import UserError
from rimifm.idx import load_idx_split
from synthetic.annotations import coco_dataset, voc_xml
from synthetic.folders import GeneratedFormat, check_seed, json_text, write_text

FORMAT = "rimifm-fmnist-scenes"
#: the scenes' folder under $DETECTRON2_DATASETS, where the detection configs look
FOLDER = "fmnist-scenes"
VERSION = 1

#: the Fashion-MNIST labels 0-9, as VOC object names
CLASSES: tuple[str, ...] = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                            "sneaker", "bag", "ankle_boot")

DEFAULT_SIZES: dict[str, int] = {
    "trainval": 300,      # scenes made of training-split items (few: where pretraining shows, fmnist_scenes.yaml)
    "test": 2000,         # scenes made of t10k items (many: one run's AP50 has a bootstrap SE of about 0.6)
    "canvas": 112,        # side of a scene, px
    "items_min": 1,       # items per scene
    "items_max": 4,
    "item_min": 28,       # side an item's 28 px frame is resized to, px (its tight box is smaller)
    "item_max": 64,
}
_SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "trainval": (1, 899_999), "test": (1, 99_999), "canvas": (32, 1024), "items_min": (1, 50),
    "items_max": (1, 50), "item_min": (8, 1024), "item_max": (8, 1024),
}

#: an item pixel brighter than this (of 255) belongs to its box
INK = 25
#: the largest share of the smaller of two boxes that another box may cover
MAX_OVERLAP = 0.3
#: placements tried for each item before it is left out of its scene
_TRIES = 30

_SEED_TAG = 0xF5_CE_7E
_SPLIT_CODES = {"trainval": 1, "test": 2}
_JPEG_OPTIONS: dict[str, Any] = {"format": "JPEG", "quality": 95, "subsampling": 0,
                                 "optimize": False, "progressive": False}

SCENES = GeneratedFormat(
    format=FORMAT, version=VERSION, what="Fashion-MNIST scene set",
    command="python tools/make_fmnist_scenes.py --root <Fashion-MNIST IDX folder> --out {root}",
    classes=CLASSES, defaults=DEFAULT_SIZES, limits=_SIZE_LIMITS,
    folders=("VOC2007/JPEGImages", "VOC2007/Annotations", "VOC2007/ImageSets/Main", "annotations"),
    layout=frozenset({"VOC2007", "annotations", "sources.json"}))


def resolve_sizes(sizes: dict[str, Any]) -> dict[str, int]:
    """Defaults overridden by `sizes` (None = default), checked against each other."""
    out = SCENES.resolve_sizes(sizes)
    if out["items_min"] > out["items_max"]:
        raise UserError(f"items_min (--items-min) {out['items_min']} is above items_max (--items-max) "
                        f"{out['items_max']}")
    if out["item_min"] > out["item_max"]:
        raise UserError(f"item_min (--item-min) {out['item_min']} is above item_max (--item-max) {out['item_max']}")
    if out["item_max"] > out["canvas"]:
        raise UserError(f"a canvas of {out['canvas']} px (--canvas) is too small for items of up to "
                        f"{out['item_max']} px (--item-max): raise --canvas or lower --item-max")
    return out


def fingerprint(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """What identifies the source items: the two splits' counts and a digest of their images and labels."""
    digest = hashlib.sha256()
    for images, labels in (train, test):
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return {"train_items": len(train[1]), "test_items": len(test[1]), "sha256": digest.hexdigest()}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SEED_TAG, seed, _SPLIT_CODES[split], index]))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area, boxes as inclusive pixel indices (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = min((a[2] - a[0] + 1) * (a[3] - a[1] + 1), (b[2] - b[0] + 1) * (b[3] - b[1] + 1))
    return w * h / area


def render_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                 sizes: dict[str, int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One scene: the grey canvas (uint8 [canvas, canvas]) and its objects.

    Each object: `label`, `index` (of its item in `images`) and `box` (x0, y0, x1, y1), inclusive
    0-based pixel indices of the canvas. Items whose every placement overlaps too much are left out;
    the first always fits.
    """
    side = sizes["canvas"]
    canvas = np.zeros((side, side), dtype=np.uint8)
    objects: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(sizes["items_min"], sizes["items_max"] + 1))):
        index = int(rng.integers(len(images)))
        size = int(rng.integers(sizes["item_min"], sizes["item_max"] + 1))
        item = np.asarray(Image.fromarray(images[index]).resize((size, size), Image.BILINEAR))
        ys, xs = np.nonzero(item > INK)
        if len(xs) == 0:  # an item with no ink has no box: leave it out
            continue
        tight = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        for _ in range(_TRIES):
            x, y = (int(v) for v in rng.integers(0, side - size + 1, 2))
            box = (x + tight[0], y + tight[1], x + tight[2], y + tight[3])
            if all(_overlap(box, o["box"]) <= MAX_OVERLAP for o in objects):
                region = canvas[y:y + size, x:x + size]
                np.maximum(region, item, out=region)
                objects.append({"label": int(labels[index]), "index": index, "box": box})
                break
    return canvas, objects


def _voc_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects as VOC's 1-based inclusive boxes."""
    return [{"name": CLASSES[o["label"]], "truncated": 0, "difficult": 0, "xmin": o["box"][0] + 1,
             "ymin": o["box"][1] + 1, "xmax": o["box"][2] + 1, "ymax": o["box"][3] + 1} for o in objects]


def _write_all(root: Path, seed: int, sizes: dict[str, int], splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    voc = root / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    (root / "annotations").mkdir()
    sources: dict[str, list[list[Any]]] = {}
    next_id = 1
    for split, source in (("trainval", "train"), ("test", "t10k")):
        images, labels = splits[source]
        records = []
        for i in range(sizes[split]):
            image_id = f"{next_id:06d}"
            next_id += 1
            canvas, objects = render_scene(_rng(seed, split, i), images, labels, sizes)
            Image.fromarray(canvas).convert("RGB").save(voc / "JPEGImages" / f"{image_id}.jpg", **_JPEG_OPTIONS)
            voc_objects = _voc_objects(objects)
            write_text(voc / "Annotations" / f"{image_id}.xml", voc_xml(image_id, sizes["canvas"], voc_objects, FORMAT))
            records.append((image_id, voc_objects))
            sources[image_id] = [[source, o["index"]] for o in objects]
        write_text(voc / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{r[0]}\n" for r in records))
        write_text(root / "annotations" / f"instances_{split}.json",
                   json_text(coco_dataset(split, sizes["canvas"], records, CLASSES, FORMAT, "clothing", VERSION)))
    write_text(root / "sources.json", json_text(sources))


def generate(idx_root: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0, force: bool = False,
             **sizes: int) -> Path:
    """Compose the scene set from the IDX files in `idx_root` into `out_dir` and return its path.

    Written whole or not at all; an existing set made from the same files, seed and sizes is reused
    (synthetic.folders).
    """
    seed = check_seed(seed)
    resolved = resolve_sizes(sizes)
    splits = {"train": load_idx_split(idx_root, True, "--root"), "t10k": load_idx_split(idx_root, False, "--root")}
    for name, (_, labels) in splits.items():
        if labels.max() >= len(CLASSES) or labels.min() < 0:
            raise UserError(f"the {name} labels in {idx_root} run from {labels.min()} to {labels.max()}; Fashion-MNIST "
                            f"scenes need the 10 classes 0-9 (is it another IDX set?)")
    source = fingerprint(splits["train"], splits["t10k"])
    return SCENES.generate(out_dir, seed, resolved, lambda root: _write_all(root, seed, resolved, splits),
                           force=force, extra={"source": source})


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and validate `out_dir/meta.json` of a scene set; UserError if missing or not valid."""
    return SCENES.read_meta(out_dir)
