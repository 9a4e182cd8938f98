"""Slow, literal re-statement of detectron2's VOC evaluation, to check and time the vectorised one.

It follows the structure of detectron2's PascalVOCDetectionEvaluator: per-class prediction lines
(`"<image> <score:.3f> <x0+1:.1f> <y0+1:.1f> <x1:.1f> <y1:.1f>"`), then for every class and IoU
threshold a fresh pass that sorts the class's detections by score and walks them one by one,
matching each to its best-overlapping GT. Nothing is shared with `voc.py` on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def reference_ap_from_curve(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """AP of one precision/recall curve: 11-point (VOC2007) or area under the precision envelope."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):  # make precision non-increasing from the right
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])


def _prediction_lines(detections: Mapping[str, Any], num_classes: int, rounding: bool) -> list[list]:
    """Per class, one entry per detection in input order, as detectron2's `process` collects them."""
    per_class: list[list] = [[] for _ in range(num_classes)]
    boxes = np.asarray(detections["boxes"]).reshape(-1, 4)
    for image_id, box, score, cls in zip(detections["image_ids"], boxes, detections["scores"], detections["labels"]):
        if rounding:
            xmin, ymin, xmax, ymax = box.astype(np.float32)
            xmin += 1
            ymin += 1
            per_class[int(cls)].append(f"{image_id} {float(score):.3f} {xmin:.1f} {ymin:.1f} {xmax:.1f} {ymax:.1f}")
        else:
            xmin, ymin, xmax, ymax = (float(v) for v in box)
            per_class[int(cls)].append((str(image_id), float(score), xmin + 1.0, ymin + 1.0, xmax, ymax))
    return per_class


def _one_class(lines: list, class_id: int, ground_truth: Mapping[str, Mapping[str, np.ndarray]],
               ovthresh: float, use_07_metric: bool) -> float:
    """One run of the per-class loop at one IoU threshold; returns AP in [0, 1]."""
    class_recs = {}
    npos = 0
    for image_id, rec in ground_truth.items():
        keep = np.asarray(rec["labels"]) == class_id
        bbox = np.asarray(rec["boxes"], dtype=float).reshape(-1, 4)[keep]
        difficult = np.asarray(rec["difficult"], dtype=bool)[keep]
        npos += int(np.sum(~difficult))
        class_recs[str(image_id)] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}

    if lines and isinstance(lines[0], str):
        fields = [ln.strip().split(" ") for ln in lines]
        image_ids = [f[0] for f in fields]
        confidence = np.array([float(f[1]) for f in fields])
        BB = np.array([[float(z) for z in f[2:]] for f in fields]).reshape(-1, 4)
    else:
        image_ids = [f[0] for f in lines]
        confidence = np.array([f[1] for f in lines], dtype=float)
        BB = np.array([f[2:] for f in lines], dtype=float).reshape(-1, 4)

    order = np.argsort(-confidence)
    BB = BB[order, :]
    image_ids = [image_ids[i] for i in order]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        gt = R["bbox"].astype(float)
        if gt.size > 0:
            ixmin = np.maximum(gt[:, 0], bb[0])
            iymin = np.maximum(gt[:, 1], bb[1])
            ixmax = np.minimum(gt[:, 2], bb[2])
            iymax = np.minimum(gt[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_ap_from_curve(rec, prec, use_07_metric)


def reference_voc_eval(detections: Mapping[str, Any], ground_truth: Mapping[str, Mapping[str, np.ndarray]],
                       class_names: Sequence[str], iou_thresholds: Sequence[float] = tuple(
                           t / 100.0 for t in range(50, 100, 5)),
                       use_07_metric: bool = True, d2_text_rounding: bool = True) -> dict[str, Any]:
    """Same inputs and headline outputs as `voc.voc_ap` ("AP", "AP50", "AP75", "ap_table"), computed literally."""
    per_class = _prediction_lines(detections, len(class_names), d2_text_rounding)
    table = []
    for thresh in iou_thresholds:
        row = []
        for c in range(len(class_names)):
            row.append(_one_class(per_class[c], c, ground_truth, thresh, use_07_metric) * 100)
        table.append(row)
    means = [np.mean(row) for row in table]
    named = {round(t * 100): m for t, m in zip(iou_thresholds, means)}
    return {"AP": float(np.mean(means)), "AP50": named.get(50), "AP75": named.get(75), "ap_table": table}
