"""Detections in COCO results format (`[{image_id, category_id, bbox: [x, y, w, h], score}]`) read into the
arrays the VOC evaluator takes, and evaluated against a VOC split (tools/eval_detections.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detection.evaluation.voc import DEFAULT_IOU_THRESHOLDS, VOC_CLASSES, read_voc_annotations, voc_ap
from rimifm.errors import UserError


def coco_results_to_detections(results: Any, image_ids: Sequence[str], num_classes: int,
                               source: str = "detections") -> dict[str, np.ndarray]:
    """COCO results list -> the arrays voc_ap takes; bbox [x,y,w,h] becomes (x, y, x+w, y+h).

    image_id may be the VOC id string, or an int that equals an id ("12") or its 6-digit
    zero-padded form ("000012", VOC2007 style). category_id 1..K follows the class order.
    """
    if not isinstance(results, list):
        raise UserError(f"{source}: expected a JSON list of {{image_id, category_id, bbox, score}}")
    known = set(image_ids)
    id_cache: dict[Any, str] = {}
    out_ids, out_lab, out_box, out_score = [], [], [], []
    for n, r in enumerate(results):
        try:
            raw, cat, bbox, score = r["image_id"], r["category_id"], r["bbox"], r["score"]
        except (KeyError, TypeError):
            raise UserError(f"{source}: entry {n} lacks image_id/category_id/bbox/score") from None
        if not isinstance(raw, (str, int)):
            raise UserError(f"{source}: entry {n} has image_id {raw!r}; expected a VOC id string or an int")
        key = id_cache.get(raw)
        if key is None:
            key = str(raw)
            if key not in known and isinstance(raw, int) and f"{raw:06d}" in known:
                key = f"{raw:06d}"
            if key not in known:
                raise UserError(f"{source}: entry {n} has image_id {raw!r}, which is not in the split")
            id_cache[raw] = key
        if not isinstance(cat, int) or not 1 <= cat <= num_classes:
            raise UserError(f"{source}: entry {n} has category_id {cat!r}; expected 1..{num_classes}")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise UserError(f"{source}: entry {n} has bbox {bbox!r}; expected [x, y, w, h]")
        out_ids.append(key)
        out_lab.append(cat - 1)
        out_box.append(bbox)
        out_score.append(score)
    try:
        xywh = np.asarray(out_box, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(out_score, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{source}: bbox and score values must be numbers") from None
    # detectron2 made w = x1 - x0 in float32; adding in float32 gives x1 back
    x0 = xywh[:, :2].astype(np.float32)
    x1 = x0 + xywh[:, 2:].astype(np.float32)
    boxes = np.concatenate([x0, x1], axis=1)
    return {"image_ids": np.asarray(out_ids, dtype=object), "boxes": boxes, "scores": scores,
            "labels": np.asarray(out_lab, dtype=np.int64)}


def read_coco_results_file(results_json: str | os.PathLike, voc_root: str | os.PathLike, split: str = "test",
                           year: int = 2007, class_names: Sequence[str] = VOC_CLASSES) -> tuple[dict, dict]:
    """(detections, ground truth) as voc_ap takes them, from a COCO-format results JSON and a VOC split."""
    path = Path(results_json)
    if not path.is_file():
        raise UserError(f"detections file {path} does not exist")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"detections file {path} is not valid JSON ({exc})") from None
    gt = read_voc_annotations(voc_root, split=split, year=year, class_names=class_names)
    return coco_results_to_detections(results, list(gt), len(class_names), source=str(path)), gt


def evaluate_coco_results_file(results_json: str | os.PathLike, voc_root: str | os.PathLike,
                               split: str = "test", year: int = 2007,
                               class_names: Sequence[str] = VOC_CLASSES,
                               iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
                               d2_text_rounding: bool = True) -> dict[str, Any]:
    """Evaluate a COCO-format results JSON against a VOC split (11-point metric for 2007, area otherwise)."""
    dets, gt = read_coco_results_file(results_json, voc_root, split, year, class_names)
    return voc_ap(dets, gt, class_names, iou_thresholds=iou_thresholds, use_07_metric=(int(year) == 2007),
                  d2_text_rounding=d2_text_rounding)


__all__ = ["coco_results_to_detections", "evaluate_coco_results_file", "read_coco_results_file"]
