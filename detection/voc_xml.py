"""One reader of PASCAL VOC annotation XML, shared by the dataset loader and the VOC evaluator.

Boxes are returned exactly as written (1-based, inclusive pixel indices); each caller applies its
own convention (the dataset loader detectron2's `-1`, the evaluator none).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rimifm.errors import UserError


@dataclass(frozen=True)
class VocObject:
    name: str
    label: int
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written
    difficult: bool


def parse_voc_xml(path: str | Path, class_index: Mapping[str, int]) -> tuple[ET.ElementTree, list[VocObject]]:
    """(parsed tree, objects) of one annotation file; UserError naming the file on any defect."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist")
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise UserError(f"annotation file {path} is not valid XML ({exc}); fix or regenerate it") from None
    objects = []
    for obj in tree.findall("object"):
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if name not in class_index:
            raise UserError(f"annotation file {path} has an object of unknown class {name!r}; expected one of "
                            f"{', '.join(class_index)} (fix the file, or use the class list of this dataset)")
        try:
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError("no <bndbox>")
            coords = []
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                el = bb.find(tag)
                if el is None or not (el.text or "").strip():
                    raise ValueError(f"no <bndbox><{tag}>")
                coords.append(float(el.text.strip()))
            diff_el = obj.find("difficult")
            difficult = int((diff_el.text or "0").strip()) if diff_el is not None else 0
        except ValueError as exc:
            raise UserError(f"annotation file {path} has a malformed object {name!r} ({exc}; every object needs "
                            "a numeric <bndbox> xmin/ymin/xmax/ymax and an integer <difficult>)") from None
        objects.append(VocObject(name, class_index[name], tuple(coords), bool(difficult)))
    return tree, objects
