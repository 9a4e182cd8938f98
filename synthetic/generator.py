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

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rimifm.errors import UserError
from synthetic.annotations import _coco_dataset, _json_text, _voc_xml, _write_text
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

# Top-level entries of a generated set (used to decide whether a folder is safe to replace).
_LAYOUT_NAMES = frozenset({"meta.json", "pretrain", "classification", "detection"})

# Stable stream codes: an image's random stream is keyed by (tag, seed, split code, index...).
_SEED_TAG = 0x5EED_51
_SPLIT_CODES = {"pretrain": 1, "cls_train": 2, "cls_val": 3, "det_trainval": 4, "det_test": 5}

_PNG_OPTIONS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}
_JPEG_OPTIONS: dict[str, Any] = {"format": "JPEG", "quality": 95, "subsampling": 0,
                                 "optimize": False, "progressive": False}


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
