"""Detection datasets as detectron2-style dicts, read by our own VOC and COCO loaders.

Both engines read the same records: one dict per image with `file_name`, `image_id`, `height`,
`width` and `annotations`, each annotation `{bbox, bbox_mode, category_id (0-based), difficult,
iscrowd}` with `bbox` as absolute `(x0, y0, x1, y1)` (bbox_mode XYXY_ABS, the int 0; detectron2's
`BoxMode.XYXY_ABS` when detectron2 is installed - the same value).

VOC follows detectron2's `load_voc_instances` conventions: ids from `ImageSets/Main/<split>.txt`,
size from the XML, and a box `(xmin, ymin, xmax, ymax)` of 1-based inclusive pixel indices becomes
`(xmin - 1, ymin - 1, xmax, ymax)` in continuous coordinates; difficult objects are kept (marked).
COCO maps the sorted category ids to 0..K-1 like detectron2's `load_coco_json` and turns
`[x, y, w, h]` into `(x, y, x + w, y + h)`.

`register_datasets` names the standard splits (under `$DETECTRON2_DATASETS`, default `datasets/`),
the Fashion-MNIST scenes (`fmnist_scenes_{trainval,test}` under `$DETECTRON2_DATASETS/fmnist-scenes`)
and the synthetic set in our registry, and in detectron2's catalogs when detectron2 imports. It
only stores paths: nothing is read until a dataset is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detection.voc_xml import VocObject, parse_voc_xml
from rimifm.config import dataset_root
from rimifm.errors import UserError
from synthetic.fmnist_scenes import CLASSES as SCENE_CLASSES
from synthetic.fmnist_scenes import FOLDER as FMNIST_SCENES_FOLDER

#: detectron2's BoxMode.XYXY_ABS and BoxMode.XYWH_ABS values
XYXY_ABS = 0
XYWH_ABS = 1

VOC_SPLITS: dict[str, tuple[str, str, int]] = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_train": ("VOC2007", "train", 2007),
    "voc_2007_val": ("VOC2007", "val", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "voc_2012_train": ("VOC2012", "train", 2012),
    "voc_2012_val": ("VOC2012", "val", 2012),
}
COCO_SPLITS: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
SYNTHETIC_SPLITS: dict[str, str] = {"synthetic_trainval": "trainval", "synthetic_test": "test"}
#: the Fashion-MNIST scenes (synthetic.fmnist_scenes), under <dataset_root>/fmnist-scenes
FMNIST_SCENES_SPLITS: dict[str, str] = {"fmnist_scenes_trainval": "trainval", "fmnist_scenes_test": "test"}

_HINT_VOC = "put PASCAL VOC there (VOCdevkit's VOC2007/VOC2012 folders) or set $DETECTRON2_DATASETS"
_HINT_COCO = "put COCO 2017 there (coco/{train2017,val2017,annotations}) or set $DETECTRON2_DATASETS"


def _hint_scenes(root: str) -> str:
    return (f"create it with `python tools/make_fmnist_scenes.py --out {root}` (it reads Fashion-MNIST's IDX "
            "files; --root names their folder), or set $DETECTRON2_DATASETS to the folder that holds fmnist-scenes/")


def _hint_synthetic(root: str) -> str:
    return (f"create it with `python tools/make_synthetic.py --out {root}`, or point $RIMIFM_SYNTHETIC "
            "(or RIMIFM.SYNTHETIC_ROOT) at an existing synthetic set")


_box_mode_cache: list[Any] = []


def _detectron2_installed() -> bool:
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):
        return False


def xyxy_abs_mode() -> Any:
    """detectron2's BoxMode.XYXY_ABS when detectron2 is installed, else the int 0 (equal values)."""
    if not _box_mode_cache:
        mode: Any = XYXY_ABS
        if _detectron2_installed():
            try:
                from detectron2.structures import BoxMode

                mode = BoxMode.XYXY_ABS
            except ImportError:
                pass
        _box_mode_cache.append(mode)
    return _box_mode_cache[0]


# ----------------------------------------------------------------------------- roots


def synthetic_root(configured: str = "") -> str:
    """Folder of the synthetic set: the config value, else `$RIMIFM_SYNTHETIC`, else `<dataset_root>/synthetic`."""
    if configured:
        return os.path.expanduser(configured)
    env = os.environ.get("RIMIFM_SYNTHETIC", "")
    return os.path.expanduser(env) if env else os.path.join(dataset_root(), "synthetic")


# ----------------------------------------------------------------------------- VOC


def _xml_int(tree: ET.ElementTree, tag: str, path: Path) -> int:
    el = tree.find(f"./size/{tag}")
    try:
        value = int(float((el.text or "").strip())) if el is not None else None
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise UserError(f"annotation file {path} lacks a valid <size><{tag}>; fix or regenerate the file")
    return value


def _voc_annotation(obj: VocObject) -> dict[str, Any]:
    """detectron2's VOC convention: 1-based inclusive pixel indices -> continuous coordinates."""
    x0, y0, x1, y1 = obj.box
    return {"bbox": [x0 - 1.0, y0 - 1.0, x1, y1], "bbox_mode": xyxy_abs_mode(), "category_id": obj.label,
            "difficult": int(obj.difficult), "iscrowd": 0}


def read_voc_split(dirname: str | os.PathLike, split: str, class_names: Sequence[str],
                   check_images: bool = True) -> list[dict[str, Any]]:
    """Dataset dicts of one VOC split: `dirname` holds Annotations/, ImageSets/Main/<split>.txt, JPEGImages/."""
    base = Path(dirname)
    if not base.is_dir():
        raise UserError(f"VOC folder {base} does not exist; {_HINT_VOC}")
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise UserError(f"split file {split_file} does not exist; the VOC folder {base} is incomplete "
                        f"(expected ImageSets/Main/{split}.txt)")
    try:
        ids = split_file.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"split file {split_file} cannot be read ({exc})") from None
    class_index = {c: i for i, c in enumerate(class_names)}
    seen: set[str] = set()
    records = []
    for file_id in ids:
        if file_id in seen:
            raise UserError(f"split file {split_file} lists image {file_id} twice; remove the duplicate")
        seen.add(file_id)
        anno = base / "Annotations" / f"{file_id}.xml"
        image = base / "JPEGImages" / f"{file_id}.jpg"
        if not anno.is_file():
            raise UserError(f"annotation file {anno} does not exist (listed in {split_file})")
        tree, objects = parse_voc_xml(anno, class_index)
        if check_images and not image.is_file():
            raise UserError(f"image file {image} does not exist (listed in {split_file}); "
                            "restore it or remove the id from the split file")
        records.append({
            "file_name": str(image), "image_id": file_id,
            "height": _xml_int(tree, "height", anno), "width": _xml_int(tree, "width", anno),
            "annotations": [_voc_annotation(obj) for obj in objects],
        })
    return records


# ----------------------------------------------------------------------------- COCO


def _coco_fail(path: Path, what: str) -> UserError:
    return UserError(f"COCO annotation file {path}: {what}")


def read_coco_json(json_file: str | os.PathLike, image_root: str | os.PathLike,
                   check_images: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dataset dicts of a COCO instances JSON, plus metadata (thing_classes, thing_dataset_id_to_contiguous_id).

    Category ids are mapped, in sorted order, to 0..K-1. Images keep the JSON's order.
    """
    path, root = Path(json_file), Path(image_root)
    if not path.is_file():
        raise UserError(f"COCO annotation file {path} does not exist; {_HINT_COCO}")
    if not root.is_dir():
        raise UserError(f"COCO image folder {root} does not exist; {_HINT_COCO}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"COCO annotation file {path} is not valid JSON ({exc}); fix or re-download it") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise _coco_fail(path, "expected an object with 'images' and 'categories' lists")
    try:
        cats = sorted(data["categories"], key=lambda c: c["id"])
        id_map = {int(c["id"]): i for i, c in enumerate(cats)}
        classes = [str(c["name"]) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise _coco_fail(path, "every category needs an integer 'id' and a 'name'") from None
    if len(id_map) != len(cats):
        raise _coco_fail(path, "category ids are not unique")

    per_image: dict[int, list[dict[str, Any]]] = {}
    for n, ann in enumerate(data.get("annotations") or []):
        try:
            image_id, cat, bbox = ann["image_id"], int(ann["category_id"]), ann["bbox"]
            x, y, w, h = (float(v) for v in bbox)
        except (KeyError, TypeError, ValueError):
            raise _coco_fail(path, f"annotation {n} needs image_id, category_id and bbox [x, y, w, h]") from None
        if cat not in id_map:
            raise _coco_fail(path, f"annotation {n} has category_id {cat}, which is not among the categories "
                                   f"{sorted(id_map)}")
        rec: dict[str, Any] = {"bbox": [x, y, x + w, y + h], "bbox_mode": xyxy_abs_mode(),
                               "category_id": id_map[cat], "difficult": int(bool(ann.get("difficult", 0))),
                               "iscrowd": int(bool(ann.get("iscrowd", 0)))}
        seg = ann.get("segmentation")
        if isinstance(seg, dict) or (isinstance(seg, list) and seg):
            if isinstance(seg, list):  # polygons: keep the valid ones (>= 3 points), as detectron2 does
                seg = [p for p in seg if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
            if seg:
                rec["segmentation"] = seg
        per_image.setdefault(image_id, []).append(rec)

    records = []
    for n, img in enumerate(data["images"]):
        try:
            image_id, file_name = img["id"], str(img["file_name"])
            height, width = int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise _coco_fail(path, f"image entry {n} needs id, file_name, height and width") from None
        image = root / file_name
        if check_images and not image.is_file():
            raise UserError(f"image file {image} does not exist (listed in {path}); restore it or use the "
                            "matching annotation file")
        records.append({"file_name": str(image), "image_id": image_id, "height": height, "width": width,
                        "annotations": per_image.pop(image_id, [])})
    if per_image:
        orphan = next(iter(per_image))
        raise _coco_fail(path, f"annotations refer to image_id {orphan!r}, which is not in 'images'")
    return records, {"thing_classes": classes, "thing_dataset_id_to_contiguous_id": id_map}


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    """One named split: how to load it (paths only) and its metadata."""

    name: str
    kind: str  # "voc" | "coco"
    metadata: dict[str, Any] = field(hash=False, compare=True)

    def check_exists(self) -> None:
        """Cheap check that the split's folders / files are there (UserError saying how to get them)."""
        m = self.metadata
        if self.kind == "voc":
            if not Path(m["dirname"]).is_dir():
                hint = (_hint_synthetic(m["root"]) if self.name.startswith("synthetic") else
                        _hint_scenes(m["root"]) if self.name.startswith("fmnist_scenes") else _HINT_VOC)
                raise UserError(f"dataset {self.name}: folder {m['dirname']} does not exist; {hint}")
            return
        for key in ("json_file", "image_root"):
            if not Path(m[key]).exists():
                raise UserError(f"dataset {self.name}: {m[key]} does not exist; {_HINT_COCO}")

    def load(self) -> list[dict[str, Any]]:
        """Read the split from disk (VOC XML or COCO JSON)."""
        self.check_exists()
        m = self.metadata
        if self.kind == "voc":
            return read_voc_split(m["dirname"], m["split"], m["thing_classes"])
        return read_coco_json(m["json_file"], m["image_root"])[0]

    def load_with_metadata(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Records plus the metadata known only after reading (COCO classes and id mapping)."""
        if self.kind == "coco":
            dicts, meta = read_coco_json(self.metadata["json_file"], self.metadata["image_root"])
            return dicts, {**self.metadata, **meta}
        return self.load(), dict(self.metadata)


#: every registered split by name (filled by register_datasets)
REGISTRY: dict[str, DatasetSpec] = {}


def _specs(root: str, synth: str, scenes: str) -> list[DatasetSpec]:
    from detection.evaluation.voc import VOC_CLASSES
    from synthetic.generator import CLASSES

    specs = []
    for name, (folder, split, year) in VOC_SPLITS.items():
        specs.append(DatasetSpec(name, "voc", {
            "thing_classes": list(VOC_CLASSES), "dirname": os.path.join(root, folder), "split": split,
            "year": year, "evaluator_type": "pascal_voc", "root": root}))
    for name, (images, anno) in COCO_SPLITS.items():
        specs.append(DatasetSpec(name, "coco", {
            "image_root": os.path.join(root, images), "json_file": os.path.join(root, anno),
            "evaluator_type": "coco", "root": root}))
    for name, split in SYNTHETIC_SPLITS.items():
        specs.append(DatasetSpec(name, "voc", {
            "thing_classes": list(CLASSES), "dirname": os.path.join(synth, "detection", "VOC2007"),
            "split": split, "year": 2007, "evaluator_type": "pascal_voc", "root": synth}))
    for name, split in FMNIST_SCENES_SPLITS.items():
        specs.append(DatasetSpec(name, "voc", {
            "thing_classes": list(SCENE_CLASSES), "dirname": os.path.join(scenes, "VOC2007"),
            "split": split, "year": 2007, "evaluator_type": "pascal_voc", "root": scenes}))
    return specs


def register_datasets(root: str | None = None, synthetic: str | None = None,
                      detectron2: bool | None = None, scenes: str | None = None) -> list[str]:
    """Register the standard VOC/COCO splits, the synthetic set and the scenes; returns their names.

    root: default `dataset_root()`; synthetic: default `synthetic_root()`; scenes: the Fashion-MNIST
    scenes' folder, default `<root>/fmnist-scenes`. detectron2: also
    register in detectron2's DatasetCatalog/MetadataCatalog (None: when detectron2 imports).
    Calling again with the same paths changes nothing; with other paths it re-points the names.
    """
    detectron2_requested = bool(detectron2)
    root = dataset_root() if root is None else os.path.expanduser(root)
    synth = synthetic_root() if synthetic is None else synthetic_root(synthetic)
    scenes = os.path.expanduser(scenes) if scenes else os.path.join(root, FMNIST_SCENES_FOLDER)
    specs = _specs(root, synth, scenes)
    for spec in specs:
        REGISTRY[spec.name] = spec
    if detectron2 is None:
        detectron2 = _detectron2_installed()
    if detectron2:
        try:
            _register_in_detectron2(specs)
        except ImportError:
            if detectron2_requested:
                raise

    return [s.name for s in specs]


def register_from_config(cfg: Any, detectron2: bool) -> list[str]:
    """register_datasets with a config's own folders (RIMIFM.SYNTHETIC_ROOT, RIMIFM.SCENES_ROOT; "" = default)."""
    return register_datasets(synthetic=cfg.RIMIFM.SYNTHETIC_ROOT or None, scenes=cfg.RIMIFM.SCENES_ROOT or None,
                             detectron2=detectron2)


def get_spec(name: str) -> DatasetSpec:
    """The registered split `name`; UserError listing the known names otherwise."""
    if not REGISTRY:
        register_datasets(detectron2=False)
    if name not in REGISTRY:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def get_dataset_dicts(name: str) -> list[dict[str, Any]]:
    """Load a registered split by name."""
    return get_spec(name).load()


def get_metadata(name: str) -> dict[str, Any]:
    """Metadata of a registered split (for COCO, thing_classes appear once the split is loaded)."""
    return dict(get_spec(name).metadata)


#: names we registered in detectron2, with the spec they point at
_D2_REGISTERED: dict[str, DatasetSpec] = {}


def _d2_loader(spec: DatasetSpec) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        from detectron2.data import MetadataCatalog

        dicts, meta = spec.load_with_metadata()
        md = MetadataCatalog.get(spec.name)
        for key in ("thing_classes", "thing_dataset_id_to_contiguous_id"):
            if key in meta and not hasattr(md, key):
                setattr(md, key, meta[key])
        return dicts

    return load


def _register_in_detectron2(specs: Sequence[DatasetSpec]) -> None:
    """Point detectron2's catalogs at our loaders, replacing its built-in entries of the same names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for spec in specs:
        if _D2_REGISTERED.get(spec.name) == spec and spec.name in DatasetCatalog:
            continue
        if spec.name in DatasetCatalog:
            DatasetCatalog.remove(spec.name)
        if spec.name in MetadataCatalog:
            MetadataCatalog.remove(spec.name)
        DatasetCatalog.register(spec.name, _d2_loader(spec))
        MetadataCatalog.get(spec.name).set(**{k: v for k, v in spec.metadata.items() if k != "root"})
        _D2_REGISTERED[spec.name] = spec
