"""Engine-independent handling of detection predictions: VOC AP with our evaluator, COCO-results JSON.

A prediction is one image's output: `{"image_id", "boxes": (n, 4) x0,y0,x1,y1 float32 in the
dataset dicts' continuous coordinates, "scores": (n,), "labels": (n,) 0-based class}`. Both engines
collect a list of these (in data-loader order, ranks one after another) and hand it here, so VOC
numbers equal detectron2's PascalVOCDetectionEvaluator on the same predictions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detection.evaluation.bootstrap import DEFAULT_RESAMPLES, voc_ap_with_se
from detection.evaluation.voc import read_voc_annotations
from rimifm.errors import UserError
from rimifm.io import atomic_write_text

RESULTS_FILE = "coco_instances_results.json"


def make_prediction(image_id: Any, boxes: Any, scores: Any, labels: Any) -> dict[str, Any]:
    """One image's prediction with checked shapes (boxes float32, like detectron2's)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(b) == len(s) == len(lab):
        raise ValueError(f"image {image_id}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
    return {"image_id": image_id, "boxes": b, "scores": s, "labels": lab}


def stack_predictions(predictions: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Predictions of many images as the flat arrays `voc_ap` takes, order kept."""
    ids: list[str] = []
    for p in predictions:
        ids.extend([str(p["image_id"])] * len(p["scores"]))

    def cat(key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if not predictions:
            return np.zeros((0, *shape[1:]), dtype=dtype)
        return np.concatenate([np.asarray(p[key], dtype=dtype).reshape(shape) for p in predictions])

    return {"image_ids": np.asarray(ids, dtype=object), "boxes": cat("boxes", (-1, 4), np.float32),
            "scores": cat("scores", (-1,), np.float32), "labels": cat("labels", (-1,), np.int64)}


def evaluate_voc_predictions(predictions: Sequence[dict[str, Any]], dirname: str | os.PathLike, split: str,
                             year: int, class_names: Sequence[str],
                             d2_text_rounding: bool = True, resamples: int = DEFAULT_RESAMPLES,
                             seed: int = 0) -> dict[str, Any]:
    """VOC AP (AP over IoU .50:.95, AP50, AP75, per class) of predictions on a VOC split folder, with
    "se": their bootstrap standard errors over the split's images (`resamples` draws; 0: no "se")."""
    gt = read_voc_annotations(dirname, split=split, year=year, class_names=class_names)
    return voc_ap_with_se(stack_predictions(predictions), gt, class_names, use_07_metric=(int(year) == 2007),
                          d2_text_rounding=d2_text_rounding, resamples=resamples, seed=seed)


def coco_results(predictions: Sequence[dict[str, Any]],
                 category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO results list [{image_id, category_id, bbox: [x, y, w, h], score}].

    category_ids[label] is the dataset's id of a 0-based label (default label + 1, the class order
    `tools/eval_detections.py --voc` expects). w and h are computed in float32, as detectron2 does.
    """
    out: list[dict[str, Any]] = []
    for p in predictions:
        boxes = np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4)
        xywh = boxes.copy()
        xywh[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(xywh.tolist(), np.asarray(p["scores"]).tolist(),
                                     np.asarray(p["labels"]).tolist()):
            if category_ids is None:
                cat = int(label) + 1
            else:
                if not 0 <= label < len(category_ids):
                    raise UserError(f"image {p['image_id']}: predicted class {label} has no category id "
                                    f"(the dataset has {len(category_ids)} classes)")
                cat = int(category_ids[label])
            image_id = p["image_id"]
            out.append({"image_id": image_id.item() if isinstance(image_id, np.generic) else image_id,
                        "category_id": cat, "bbox": box, "score": float(score)})
    return out


def write_coco_results(path: str | os.PathLike, predictions: Sequence[dict[str, Any]],
                       category_ids: Sequence[int] | None = None) -> Path:
    """Write predictions as a COCO results JSON (atomically), for `tools/eval_detections.py`."""
    atomic_write_text(path, json.dumps(coco_results(predictions, category_ids)) + "\n")
    return Path(path)
