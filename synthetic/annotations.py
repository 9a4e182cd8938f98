"""Byte-stable text files of a set: the VOC XML and COCO JSON annotations (and meta.json's JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthetic.identity import CLASSES, FORMAT, VERSION


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
