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
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rimifm.errors import UserError

FORMAT = "rimifm-synthetic"
VERSION = 2  # 2: classification/pretraining images redrawn (see _render_single)

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")

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

# Top-level entries of a generated set (used to decide whether a folder is safe to replace).
_LAYOUT_NAMES = frozenset({"meta.json", "pretrain", "classification", "detection"})

# Stable stream codes: an image's random stream is keyed by (tag, seed, split code, index...).
_SEED_TAG = 0x5EED_51
_SPLIT_CODES = {"pretrain": 1, "cls_train": 2, "cls_val": 3, "det_trainval": 4, "det_test": 5}

_PNG_OPTIONS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}
_JPEG_OPTIONS: dict[str, Any] = {"format": "JPEG", "quality": 95, "subsampling": 0,
                                 "optimize": False, "progressive": False}

# Detection annotation rules (fractions of the full object area / of the image side).
_DROP_VISIBLE = 0.25
_DROP_MIN_PX = 4
_DIFFICULT_VISIBLE = 0.55
_DIFFICULT_SIDE = 0.12

# Classification / pretraining objects: weight of the second texture colour (0 = solid fill).
_SINGLE_TEXTURE_CONTRAST = 0.35


# --------------------------------------------------------------------------------------------
# Random streams and geometry
# --------------------------------------------------------------------------------------------

def _rng(seed: int, split: str, *index: int) -> np.random.Generator:
    """The random stream of one image: a function of (seed, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([_SEED_TAG, seed, _SPLIT_CODES[split], *index]))


def _supersample(size: int) -> int:
    """Drawing scale factor: shapes are drawn larger and box-filtered down, for smooth edges."""
    return 4 if size <= 48 else 3 if size <= 80 else 2


def _unit_shape(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Outline of class `cls` as (n, 2) vertices, centred, farthest point at distance ~1."""
    name = CLASSES[cls]
    if name == "circle":
        t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "square":
        t = math.pi / 4 + np.arange(4) * math.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "triangle":
        t = math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "hexagon":
        t = np.arange(6) * math.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        t = math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    # cross: a plus sign with arms of half-width w
    w = rng.uniform(0.24, 0.34)
    pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
           (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
    return np.asarray(pts, dtype=float)


def _place(unit: np.ndarray, radius: float, angle: float, aspect: float, cx: float, cy: float) -> np.ndarray:
    """Stretch (area-preserving), rotate, scale and move a unit outline into canvas coordinates."""
    pts = unit * np.array([aspect, 1.0 / aspect])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts * radius + np.array([cx, cy])


def _random_shape(cls: int, rng: np.random.Generator, radius: float, cx: float, cy: float) -> np.ndarray:
    """A shape of class `cls` with random rotation and a mild random stretch."""
    unit = _unit_shape(cls, rng)
    return _place(unit, radius, rng.uniform(0, 2 * math.pi), rng.uniform(0.9, 1.1), cx, cy)


def _polygon_area(pts: np.ndarray) -> float:
    """Shoelace area of a simple polygon."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_halfplane(pts: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """The part of a polygon where dot(p, normal) <= offset (one Sutherland-Hodgman pass)."""
    out: list[np.ndarray] = []
    d = pts @ normal - offset
    n = len(pts)
    for i in range(n):
        j = (i + 1) % n
        if d[i] <= 0:
            out.append(pts[i])
        if (d[i] <= 0) != (d[j] <= 0):
            t = d[i] / (d[i] - d[j])
            out.append(pts[i] + t * (pts[j] - pts[i]))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def _xy(pts: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in pts]


def _colour(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 0.0) -> np.ndarray:
    """A uniform random RGB colour, redrawn a few times if it is too close to `avoid`."""
    c = rng.uniform(0, 255, 3)
    if avoid is not None:
        for _ in range(15):
            if float(np.linalg.norm(c - avoid)) >= min_dist:
                break
            c = rng.uniform(0, 255, 3)
    return c


# --------------------------------------------------------------------------------------------
# Painting
# --------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] of shape (h, w): a small random grid, bilinearly upsampled."""
    k = int(rng.integers(3, 7))
    grid = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, box: tuple[int, int, int, int], scale: float,
             c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Fill for the region `box` (x0, y0, x1, y1): solid, stripes, checkerboard or noise mixing c1 and c2.

    `scale` (the object's diameter in canvas pixels) sets the pattern period, so patterns look alike
    at every image size.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    kind = rng.choice(4, p=[0.25, 0.3, 0.2, 0.25])
    if kind == 0:
        mix = np.zeros((h, w), dtype=np.float32)
    elif kind == 3:
        mix = np.clip((_smooth_noise(rng, w, h) - 0.5) * 3.0 + 0.5, 0.0, 1.0)
    else:
        period = max(2.0, scale * rng.uniform(0.12, 0.35))
        a = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xs * math.cos(a) + ys * math.sin(a)) / period
        if kind == 1:
            mix = ((u % 1.0) < rng.uniform(0.35, 0.65)).astype(np.float32)
        else:
            v = (-xs * math.sin(a) + ys * math.cos(a)) / period
            mix = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    tex = c1[None, None, :] * (1.0 - mix[..., None]) + c2[None, None, :] * mix[..., None]
    return np.clip(np.rint(tex), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, side: int) -> tuple[Image.Image, np.ndarray]:
    """A random two-colour gradient with low-frequency blotches; returns the image and its mean colour."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(side, dtype=np.float32) / max(side - 1, 1)
    t = ramp[None, :] * math.cos(a) + ramp[:, None] * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * t[..., None]
    blotch = (_smooth_noise(rng, side, side) - 0.5) * rng.uniform(20, 60)
    img = img + blotch[..., None]
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB"), (c0 + c1) / 2.0


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int, ss: int,
             n_lines: int, n_blobs: int, blob_radius: tuple[float, float]) -> None:
    """Random line segments and small ellipses (radii as fractions of the side) in random colours."""
    for _ in range(n_lines):
        p = rng.uniform(-0.1 * side, 1.1 * side, 4)
        width = max(1, int(round(rng.uniform(0.5, 1.6) * ss)))
        draw.line([(p[0], p[1]), (p[2], p[3])], fill=_colour(rng.uniform(0, 255, 3)), width=width)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0, side, 2)
        rx, ry = rng.uniform(*blob_radius, 2) * side
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_colour(rng.uniform(0, 255, 3)))


def _paste_shape(canvas: Image.Image, rng: np.random.Generator, pts: np.ndarray, scale: float,
                 c1: np.ndarray, c2: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Paint a textured polygon; returns its (clipped) box and boolean mask there, or None if off-canvas."""
    side_w, side_h = canvas.size
    x0 = max(0, int(math.floor(pts[:, 0].min())))
    y0 = max(0, int(math.floor(pts[:, 1].min())))
    x1 = min(side_w, int(math.ceil(pts[:, 0].max())) + 1)
    y1 = min(side_h, int(math.ceil(pts[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    box = (x0, y0, x1, y1)
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon(_xy(pts - np.array([x0, y0])), fill=255)
    tex = Image.fromarray(_texture(rng, box, scale, c1, c2), "RGB")
    canvas.paste(tex, (x0, y0), mask)
    return box, np.asarray(mask) > 127


def _finish(canvas: Image.Image, rng: np.random.Generator, ss: int) -> Image.Image:
    """Box-filter down to the output size and add pixel noise."""
    small = canvas.reduce(ss) if ss > 1 else canvas
    arr = np.asarray(small, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 10.0), arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def _render_single(rng: np.random.Generator, size: int, cls: int) -> Image.Image:
    """One classification / pretraining image: a main object of class `cls` in clutter, maybe occluded.

    Version 2 keeps the outline the strongest edge in the image: the object covers 55-90% of the side,
    its texture mixes its colour with a second one at 35% contrast, and no fragments of other shapes
    are drawn (at 32 px they were class confusers). Version 1 made the classes unlearnable at this
    scale even with labels: a supervised ResNet-18 on the 4000 labelled pretraining images stayed at
    chance on the val split after 930 steps while fitting 76% of its training images; on version 2 it
    reaches about 70% (benchmarks/synthetic_supervised.py).
    """
    ss = _supersample(size)
    side = size * ss
    canvas, bg_mean = _background(rng, side)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, side, ss, int(rng.integers(2, 7)), int(rng.integers(1, 5)), (0.02, 0.08))
    # The main object.
    radius = rng.uniform(0.55, 0.90) * side / 2
    margin = 0.85 * radius
    cx, cy = rng.uniform(margin, side - margin, 2)
    pts = _random_shape(cls, rng, radius, cx, cy)
    c1 = _random_colour(rng, bg_mean, 80.0)
    c2 = c1 + _SINGLE_TEXTURE_CONTRAST * (_random_colour(rng, bg_mean, 50.0) - c1)
    _paste_shape(canvas, rng, pts, 2 * radius, c1, c2)
    # Occasional occluder: a blob over part of the outline.
    if rng.random() < 0.25:
        a = rng.uniform(0, 2 * math.pi)
        colour = _colour(_random_colour(rng, c1, 60.0))
        dist = rng.uniform(0.6, 1.0) * radius
        ox, oy = cx + dist * math.cos(a), cy + dist * math.sin(a)
        rx, ry = rng.uniform(0.08, 0.18, 2) * side
        draw.ellipse([ox - rx, oy - ry, ox + rx, oy + ry], fill=colour)
    return _finish(canvas, rng, ss)


def _render_detection(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One detection image with 2-6 overlapping objects and their VOC-style annotations.

    A box is the tight box of the object's visible pixels (after occlusion by later objects and the
    image border); objects with too little left are drawn but not annotated.
    """
    ss = _supersample(size)
    side = size * ss
    for _attempt in range(20):
        canvas, bg_mean = _background(rng, side)
        draw = ImageDraw.Draw(canvas)
        # Blobs stay well below the smallest object, so they are not mistaken for unlabelled circles.
        _clutter(draw, rng, side, ss, int(rng.integers(3, 11)), int(rng.integers(2, 7)), (0.012, 0.035))
        owner = np.full((side, side), -1, dtype=np.int16)
        placed: list[tuple[int, float, bool]] = []  # (class, full area in output px, truncated)
        centres: list[tuple[float, float, float]] = []  # (cx, cy, radius) of the objects so far
        for i in range(int(rng.integers(2, 7))):
            cls = int(rng.integers(len(CLASSES)))
            diameter = math.exp(rng.uniform(math.log(0.12), math.log(0.5))) * side
            radius = diameter / 2
            lo, hi = 0.4 * radius, side - 0.4 * radius
            if centres and rng.random() < 0.4:  # next to an earlier object, so that they overlap
                px, py, pr = centres[int(rng.integers(len(centres)))]
                a, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 1.1) * (pr + radius)
                cx = float(np.clip(px + dist * math.cos(a), lo, hi))
                cy = float(np.clip(py + dist * math.sin(a), lo, hi))
            else:
                cx, cy = rng.uniform(lo, hi, 2)
            centres.append((cx, cy, radius))
            pts = _random_shape(cls, rng, radius, cx, cy)
            c1 = _random_colour(rng, bg_mean, 80.0)
            c2 = _random_colour(rng, bg_mean, 50.0)
            painted = _paste_shape(canvas, rng, pts, diameter, c1, c2)
            if painted is not None:
                (x0, y0, x1, y1), mask = painted
                owner[y0:y1, x0:x1][mask] = i
            truncated = bool(pts.min() < 0 or pts.max() > side)
            placed.append((cls, _polygon_area(pts) / ss**2, truncated))
        objects = _annotate(owner, placed, size, ss)
        if objects:
            return _finish(canvas, rng, ss), objects
    raise RuntimeError("could not place a visible object in 20 attempts")  # practically unreachable


def _annotate(owner: np.ndarray, placed: list[tuple[int, float, bool]], size: int, ss: int) -> list[dict[str, Any]]:
    """VOC-style records (1-based inclusive boxes) of the sufficiently visible objects, in drawing order."""
    objects = []
    for i, (cls, full_area, truncated) in enumerate(placed):
        visible = (owner == i).reshape(size, ss, size, ss).mean(axis=(1, 3)) > 0.5
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        if len(rows) == 0:
            continue
        fraction = float(visible.sum()) / max(full_area, 1e-6)
        w, h = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
        if fraction < _DROP_VISIBLE or w < _DROP_MIN_PX or h < _DROP_MIN_PX:
            continue
        difficult = fraction < _DIFFICULT_VISIBLE or max(w, h) < _DIFFICULT_SIDE * size
        objects.append({"name": CLASSES[cls], "truncated": int(truncated), "difficult": int(difficult),
                        "xmin": int(cols[0]) + 1, "ymin": int(rows[0]) + 1,
                        "xmax": int(cols[-1]) + 1, "ymax": int(rows[-1]) + 1})
    return objects


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    """UTF-8 with '\\n' line ends on every platform (byte-identical output)."""
    path.write_bytes(text.encode("utf-8"))


def _json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"


def _voc_xml(image_id: str, size: int, objects: list[dict[str, Any]]) -> str:
    """PASCAL VOC annotation XML, built as text in a fixed order."""
    lines = ["<annotation>", "\t<folder>VOC2007</folder>", f"\t<filename>{image_id}.jpg</filename>",
             "\t<source>", f"\t\t<database>{FORMAT}</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{size}</width>", f"\t\t<height>{size}</height>",
             "\t\t<depth>3</depth>", "\t</size>", "\t<segmented>0</segmented>"]
    for o in objects:
        lines += ["\t<object>", f"\t\t<name>{o['name']}</name>", "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{o['truncated']}</truncated>", f"\t\t<difficult>{o['difficult']}</difficult>",
                  "\t\t<bndbox>", f"\t\t\t<xmin>{o['xmin']}</xmin>", f"\t\t\t<ymin>{o['ymin']}</ymin>",
                  f"\t\t\t<xmax>{o['xmax']}</xmax>", f"\t\t\t<ymax>{o['ymax']}</ymax>", "\t\t</bndbox>",
                  "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _coco_dataset(split: str, size: int, records: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """COCO json for one detection split; bbox = [xmin-1, ymin-1, w, h] of the VOC box."""
    images, annotations = [], []
    for image_id, objects in records:
        images.append({"id": int(image_id), "file_name": f"{image_id}.jpg", "width": size, "height": size})
        for o in objects:
            w, h = o["xmax"] - o["xmin"] + 1, o["ymax"] - o["ymin"] + 1
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id),
                                "category_id": CLASSES.index(o["name"]) + 1,
                                "bbox": [float(o["xmin"] - 1), float(o["ymin"] - 1), float(w), float(h)],
                                "area": float(w * h), "iscrowd": 0, "difficult": o["difficult"]})
    return {"info": {"description": f"{FORMAT} detection, {split} split", "version": str(VERSION)},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]}


def _pretrain_class(rng: np.random.Generator) -> int:
    """The class of a pretraining image: the first draw of its random stream."""
    return int(rng.integers(len(CLASSES)))


def _write_all(root: Path, seed: int, sizes: dict[str, int]) -> None:
    """Generate the whole set into `root` (an empty folder); meta.json last."""
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
            _write_text(voc / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, det_size, objects))
            records.append((image_id, objects))
        _write_text(voc / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{r[0]}\n" for r in records))
        _write_text(root / "detection" / "annotations" / f"instances_{split}.json",
                    _json_text(_coco_dataset(split, det_size, records)))
    meta = {"format": FORMAT, "version": VERSION, "seed": seed, "sizes": dict(sizes), "classes": list(CLASSES)}
    _write_text(root / "meta.json", _json_text(meta))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _option(key: str) -> str:
    return f"{key} (--{key.replace('_', '-')})"


def _resolve_sizes(sizes: dict[str, Any]) -> dict[str, int]:
    """Defaults overridden by `sizes` (None = default), validated."""
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise UserError(f"unknown size option(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_SIZES)}")
    merged = dict(DEFAULT_SIZES)
    merged.update({k: v for k, v in sizes.items() if v is not None})
    out: dict[str, int] = {}
    for key, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"{_option(key)} must be an integer, got {value!r}")
        lo, hi = _SIZE_LIMITS[key]
        if not lo <= value <= hi:
            raise UserError(f"{_option(key)} must be between {lo} and {hi}, got {value}")
        out[key] = int(value)
    if out["det_trainval"] + out["det_test"] > 999_999:
        raise UserError("det_trainval + det_test must be at most 999999 (six-digit image ids)")
    return out


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise UserError(f"seed (--seed) must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def pretrain_classes(seed: int, count: int) -> list[int]:
    """Class index of each of the first `count` pretraining images of a set made with `seed`.

    Pretraining images are unlabeled on disk; their classes exist only for diagnostics such as the
    supervised reference in benchmarks/synthetic_supervised.py (never for pretraining itself).
    """
    seed = _check_seed(seed)
    return [_pretrain_class(_rng(seed, "pretrain", i)) for i in range(count)]


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and validate `out_dir/meta.json` of a generated set; UserError if missing or not valid."""
    root = Path(out_dir)
    path = root / "meta.json"
    if not path.is_file():
        raise UserError(f"no synthetic set at {root} (meta.json missing); create it with "
                        f"`python tools/make_synthetic.py --out {root}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}); regenerate with --force") from exc
    problems = []
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not the meta.json of a synthetic set (format is not {FORMAT!r})")
    if meta.get("version") != VERSION:
        problems.append(f"version {meta.get('version')!r} (expected {VERSION})")
    seed = meta.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append("seed missing")
    sizes = meta.get("sizes")
    if not isinstance(sizes, dict) or set(sizes) != set(DEFAULT_SIZES) or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()):
        problems.append("sizes missing or incomplete")
    if meta.get("classes") != list(CLASSES):
        problems.append("classes differ from this version's")
    missing = [d for d in ("pretrain", "classification/train", "classification/val", "detection/VOC2007",
                           "detection/annotations") if not (root / d).is_dir()]
    if missing:
        problems.append(f"missing folder(s) {', '.join(missing)}")
    if problems:
        raise UserError(f"synthetic set at {root} is not valid: {'; '.join(problems)}; regenerate it with "
                        f"`python tools/make_synthetic.py --out {root} --force`")
    return meta


def _stored_version(root: Path) -> Any:
    """The `version` in root/meta.json when it is a meta.json of ours, else None."""
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("version") if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def is_complete(out_dir: str | os.PathLike) -> bool:
    """True when `out_dir` holds a finished synthetic set (valid meta.json, written last)."""
    try:
        read_meta(out_dir)
    except UserError:
        return False
    return True


def _differences(meta: dict[str, Any], seed: int, sizes: dict[str, int]) -> list[str]:
    diffs = [] if meta["seed"] == seed else [f"seed {meta['seed']} (requested {seed})"]
    diffs += [f"{k} {meta['sizes'][k]} (requested {v})" for k, v in sizes.items() if meta["sizes"][k] != v]
    return diffs


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a harmless probe on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Delete `<out>.partial-<pid>` / `<out>.old-<pid>` folders left by runs that are no longer alive."""
    candidates: Iterable[Path] = list(out.parent.glob(f"{out.name}.partial-*")) + \
        list(out.parent.glob(f"{out.name}.old-*"))
    for path in candidates:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _check_replaceable(out: Path) -> None:
    """Refuse to delete (even with force) a folder that does not look like a synthetic set."""
    meta = out / "meta.json"
    try:
        ours = json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    extra = sorted(p.name for p in out.iterdir() if p.name not in _LAYOUT_NAMES)
    if not ours and extra:
        raise UserError(f"refusing to delete {out}: it does not look like a synthetic set (it contains "
                        f"{', '.join(extra[:5])}); delete it yourself or choose another --out")


def generate(out_dir: str | os.PathLike, seed: int = 0, force: bool = False, **sizes: int) -> Path:
    """Create the synthetic set in `out_dir` (sizes default to DEFAULT_SIZES) and return its path.

    Everything is written to a temporary sibling folder and renamed into place at the end, so an
    interrupted run never leaves a half-written set. An existing complete set with the same seed
    and sizes is reused untouched; any other existing content needs `force=True` to be replaced.
    """
    seed = _check_seed(seed)
    resolved = _resolve_sizes(sizes)
    out = Path(out_dir)
    existing = out.exists() or out.is_symlink()
    if existing:
        if not out.is_dir():
            raise UserError(f"{out} exists and is not a folder; choose another --out")
        empty = not any(out.iterdir())
        if not force and not empty:
            if not is_complete(out):
                old_version = _stored_version(out)
                if old_version is not None and old_version != VERSION:
                    raise UserError(f"{out} holds a version-{old_version} synthetic set and this code makes version "
                                    f"{VERSION} (other images): pass --force to regenerate it, or choose another --out")
                raise UserError(f"{out} exists but is not a complete synthetic set (no valid meta.json): "
                                f"pass --force to replace it, or choose another --out")
            diffs = _differences(read_meta(out), seed, resolved)
            if not diffs:
                return out
            raise UserError(f"{out} holds a synthetic set made with different settings: {'; '.join(diffs)}; "
                            f"pass --force to regenerate it, or choose another --out")
        _check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the parent folder of {out}: {exc}") from exc
    _remove_stale(out)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_all(tmp, seed, resolved)
        if out.exists() or out.is_symlink():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process may have finished the same set first: keep theirs if it matches.
            if is_complete(out) and not _differences(read_meta(out), seed, resolved):
                return out
            if old.exists() and not out.exists():
                os.replace(old, out)  # put back what was there
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out
