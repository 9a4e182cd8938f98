"""Byte-stable annotation files of a generated detection set: VOC XML and COCO JSON, built as text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def voc_xml(image_id: str, size: int, objects: list[dict[str, Any]], database: str) -> str:
    """PASCAL VOC annotation XML of a square `size` px JPEG image, in a fixed order.

    Each object is a dict with name, truncated, difficult and the 1-based inclusive xmin/ymin/xmax/ymax.
    """
    lines = ["<annotation>", "\t<folder>VOC2007</folder>", f"\t<filename>{image_id}.jpg</filename>",
             "\t<source>", f"\t\t<database>{database}</database>", "\t</source>",
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


def coco_dataset(split: str, size: int, records: list[tuple[str, list[dict[str, Any]]]],
                 classes: Sequence[str], database: str, supercategory: str, version: int) -> dict[str, Any]:
    """COCO json for one detection split; bbox = [xmin-1, ymin-1, w, h] of the VOC box."""
    images, annotations = [], []
    for image_id, objects in records:
        images.append({"id": int(image_id), "file_name": f"{image_id}.jpg", "width": size, "height": size})
        for o in objects:
            w, h = o["xmax"] - o["xmin"] + 1, o["ymax"] - o["ymin"] + 1
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id),
                                "category_id": list(classes).index(o["name"]) + 1,
                                "bbox": [float(o["xmin"] - 1), float(o["ymin"] - 1), float(w), float(h)],
                                "area": float(w * h), "iscrowd": 0, "difficult": o["difficult"]})
    return {"info": {"description": f"{database} detection, {split} split", "version": str(version)},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c, "supercategory": supercategory} for i, c in enumerate(classes)]}
