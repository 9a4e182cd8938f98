"""PASCAL VOC box AP with exactly detectron2's definition (PascalVOCDetectionEvaluator), vectorised.

detectron2's evaluator writes per-class text files and runs py-faster-rcnn's `voc_eval` loop once
per class and IoU threshold. This module computes the same numbers with numpy over all
detections at once. The definition reproduced here:

* Ground truth comes from the VOC XML files as written (1-based, inclusive pixel coordinates).
  Only GT of the evaluated class count; `difficult` GT are not positives.
* Per class, detections are ordered by `np.argsort(-score)` over the class's detections kept in
  input order (so ties are broken exactly as detectron2 breaks them for the same input order).
* IoU uses the inclusive-pixel convention: widths and heights are `x2 - x1 + 1`.
* Each detection looks only at its best-overlapping GT of the same class and image (first one on
  ties, difficult and already-matched GT included). If that IoU is strictly greater than the
  threshold: a difficult GT makes the detection neither TP nor FP; an unmatched GT makes it a TP
  (and the GT matched); a matched GT makes it a FP. Otherwise it is a FP.
* precision = tp / max(tp + fp, eps), recall = tp / npos; AP is the 11-point interpolated AP
  (`use_07_metric`, VOC2007) or the area under the monotone precision envelope (VOC2012).
* Reported: AP = mean over IoU thresholds 0.50:0.05:0.95 of the mean over classes, AP50, AP75,
  each times 100.

Box convention of our inputs (how a detectron2 model's predictions map): detection boxes are
`(x0, y0, x1, y1)` in detectron2's continuous image coordinates, i.e. what a detectron2 model
trained on its VOC loader outputs (that loader reads a GT box `(xmin, ymin, xmax, ymax)` from XML
as `(xmin - 1, ymin - 1, xmax, ymax)`). detectron2's evaluator writes `x0 + 1, y0 + 1, x1, y1`
to its text files and compares those with the XML numbers; so do we. It also writes the score
with 3 decimals and the coordinates with 1 decimal (after adding 1 in float32, the dtype of
its boxes), which changes results (score ties, IoU right at a threshold). With
`d2_text_rounding=True` (default) we apply the same rounding, so both give identical numbers on
the same predictions given in the same order; with False the full-precision values are used.
A COCO results `bbox` `[x, y, w, h]` is read as the box `(x, y, x + w, y + h)` in that same
detectron2 space (detectron2's COCO export writes exactly that).

Where detectron2 would crash we decide: a detection on an image outside the split is a
UserError; a class with no non-difficult GT gets what detectron2's formulas give (0 with the
11-point metric; NaN with the area metric when it has detections) and is listed in
`classes_without_positives`; missing `difficult`/`pose`/`truncated` tags are allowed (difficult
= 0) and non-integer XML coordinates are kept as floats.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from detection.voc_xml import parse_voc_xml
from rimifm.errors import UserError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
#: detectron2 evaluates at range(50, 100, 5) / 100.0
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(t / 100.0 for t in range(50, 100, 5))

GroundTruth = Mapping[str, Mapping[str, np.ndarray]]


# ----------------------------------------------------------------------------- rounding


def _round_decimals(x: np.ndarray, digits: int) -> np.ndarray:
    """float(f"{v:.{digits}f}") for every v, vectorised (exact: near-ties fall back to Python's formatting)."""
    x = np.asarray(x, dtype=np.float64)
    scale = 10.0 ** digits
    y = x * scale
    out = np.rint(y) / scale  # integer / power of ten: correctly rounded, like parsing the decimal text
    with np.errstate(invalid="ignore"):
        near = np.abs(np.abs(y - np.trunc(y)) - 0.5) < 1e-6
    for i in np.flatnonzero(near):
        out.flat[i] = float(f"{x.flat[i]:.{digits}f}")
    return out


def detectron2_text_boxes(boxes: np.ndarray, scores: np.ndarray, rounding: bool = True
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores as detectron2's VOC evaluator writes them to its text files, back as float64.

    `(x0, y0, x1, y1)` -> `(x0 + 1, y0 + 1, x1, y1)`; with `rounding`, the +1 is done in float32
    and coordinates/scores are rounded to 1/3 decimals like its `{:.1f}`/`{:.3f}` formatting.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if rounding:
        b32 = boxes.astype(np.float32)
        b32[:, :2] += np.float32(1)
        return _round_decimals(b32.astype(np.float64), 1), _round_decimals(scores, 3)
    out = boxes.astype(np.float64, copy=True)
    out[:, :2] += 1.0
    return out, scores.copy()


# ----------------------------------------------------------------------------- annotations


def _voc_dir(voc_root: str | os.PathLike, year: int) -> Path:
    root = Path(voc_root)
    for cand in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (cand / "Annotations").is_dir():
            return cand
    raise UserError(f"no VOC folder at {root}: expected {root}/Annotations or {root}/VOC{year}/Annotations")


def _parse_xml(path: Path, class_index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (M,4) float64 as written, labels (M,), difficult (M,) bool) of one annotation file."""
    _, objects = parse_voc_xml(path, class_index)
    return (np.asarray([o.box for o in objects], dtype=np.float64).reshape(-1, 4),
            np.asarray([o.label for o in objects], dtype=np.int64),
            np.asarray([o.difficult for o in objects], dtype=bool))


def read_voc_annotations(voc_root: str | os.PathLike, split: str = "test", year: int = 2007,
                         class_names: Sequence[str] = VOC_CLASSES) -> dict[str, dict[str, np.ndarray]]:
    """Read `ImageSets/Main/<split>.txt` and each `Annotations/<id>.xml` under a VOC<year> folder.

    `voc_root` is the VOC<year> folder itself or a folder holding it (or VOCdevkit/VOC<year>).
    Returns {image id: {"boxes": (M,4) XML coordinates, "labels": (M,) class index,
    "difficult": (M,) bool}} in split-file order.
    """
    base = _voc_dir(voc_root, year)
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise UserError(f"split file {split_file} does not exist")
    ids = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    class_index = {c: i for i, c in enumerate(class_names)}
    out: dict[str, dict[str, np.ndarray]] = {}
    for image_id in ids:
        if image_id in out:
            raise UserError(f"split file {split_file} lists image {image_id} twice")
        boxes, labels, difficult = _parse_xml(base / "Annotations" / f"{image_id}.xml", class_index)
        out[image_id] = {"boxes": boxes, "labels": labels, "difficult": difficult}
    return out


# ----------------------------------------------------------------------------- evaluation


def _image_indices(image_ids: Any, index: Mapping[str, int]) -> np.ndarray:
    ids = np.asarray(image_ids)
    if ids.dtype.kind == "O":
        ids = ids.astype(str)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    mapped = np.empty(len(uniq), dtype=np.int64)
    for i, u in enumerate(uniq.tolist()):
        key = str(u)
        if key not in index:
            raise UserError(f"detections refer to image {key!r}, which is not in the evaluated split")
        mapped[i] = index[key]
    return mapped[inverse.reshape(-1)]


def _ap_rows(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> np.ndarray:
    """AP for each row of (T, n) recall/precision curves, with detectron2's formulas and operation order."""
    T = rec.shape[0]
    if use_07_metric:
        ap = np.zeros(T)
        for t in np.arange(0.0, 1.1, 0.1):
            mask = rec >= t
            best = np.max(np.where(mask, prec, -np.inf), axis=1, initial=-np.inf)
            ap = ap + np.where(mask.any(axis=1), best, 0.0) / 11.0
        return ap
    mrec = np.concatenate([np.zeros((T, 1)), rec, np.ones((T, 1))], axis=1)
    mpre = np.concatenate([np.zeros((T, 1)), prec, np.zeros((T, 1))], axis=1)
    mpre = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
    changed = mrec[:, 1:] != mrec[:, :-1]
    terms = (mrec[:, 1:] - mrec[:, :-1]) * mpre[:, 1:]
    # sum each row over the selected entries only, as detectron2 does (same summation order)
    return np.array([np.sum(terms[r][changed[r]]) for r in range(T)])


class VocMatch(NamedTuple):
    """What voc_ap's matching decided for every detection; AP (and a bootstrap over images) follow from it.

    Detections are grouped by class (`class_bounds[c]:class_bounds[c + 1]`) and in detectron2's score
    order inside a class. A detection is matched only against the GT of its own image, so its flags
    hold for any resample of the images as long as the order inside each class is kept.
    """

    thresholds: np.ndarray  # (T,) IoU thresholds
    class_bounds: np.ndarray  # (K + 1,) detection index where each class starts
    det_image: np.ndarray  # (n,) image index (position among the ground-truth keys)
    tp: np.ndarray  # (T, n) bool: true positive at each threshold
    ignored: np.ndarray  # (T, n) bool: matched a difficult GT (neither TP nor FP)
    positives: np.ndarray  # (images, K) non-difficult GT of each image and class


def voc_ap(detections: Mapping[str, Any], ground_truth: GroundTruth, class_names: Sequence[str],
           iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, use_07_metric: bool = True,
           d2_text_rounding: bool = True) -> dict[str, Any]:
    """VOC AP of detections against ground truth, the same numbers as detectron2's VOC evaluator.

    detections: {"image_ids": (N,) ids matching ground_truth keys (compared as str),
    "boxes": (N,4) x0,y0,x1,y1 in detectron2 coordinates (see module docstring), "scores": (N,),
    "labels": (N,) class index 0..K-1}. ground_truth: as returned by read_voc_annotations (every
    image of the split, also those without objects). Returns plain-Python results: "AP", "AP50",
    "AP75" (x100; None if that threshold is not evaluated), "per_class" {name: {"AP", "AP50",
    "AP75"}}, "ap_table" (T lists of K class APs x100), "iou_thresholds", "num_positives",
    "classes_without_positives", "metric".
    """
    m = match_voc(detections, ground_truth, class_names, iou_thresholds, d2_text_rounding)
    return _summarise(ap_table(m, use_07_metric), m.thresholds, class_names, m.positives.sum(axis=0), use_07_metric)


def _flatten_ground_truth(ground_truth: GroundTruth, K: int) -> tuple[dict[str, int], np.ndarray, np.ndarray,
                                                                         np.ndarray, np.ndarray]:
    """Phase 1: every GT box in one array, grouped by (class, image) keeping XML order inside a group.
    Returns (image index, group keys, boxes, difficult flags, non-difficult positives per image and class)."""
    image_list = [str(k) for k in ground_truth]
    index = {k: i for i, k in enumerate(image_list)}
    n_img = len(image_list)
    parts_b, parts_l, parts_d, parts_i = [], [], [], []
    for i, key in enumerate(ground_truth):
        rec = ground_truth[key]
        labels = np.asarray(rec["labels"], dtype=np.int64).reshape(-1)
        parts_b.append(np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4))
        parts_l.append(labels)
        parts_d.append(np.asarray(rec.get("difficult", np.zeros(len(labels), bool)), dtype=bool).reshape(-1))
        parts_i.append(np.full(len(labels), i, dtype=np.int64))
    gt_boxes = np.concatenate(parts_b) if parts_b else np.zeros((0, 4))
    gt_labels = np.concatenate(parts_l) if parts_l else np.zeros(0, np.int64)
    gt_diff = np.concatenate(parts_d) if parts_d else np.zeros(0, bool)
    gt_img = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
    if gt_labels.size and (gt_labels.min() < 0 or gt_labels.max() >= K):
        raise UserError(f"ground-truth labels must be in 0..{K - 1}")
    positives = np.zeros((n_img, K), dtype=np.int64)
    np.add.at(positives, (gt_img[~gt_diff], gt_labels[~gt_diff]), 1)
    gt_key = gt_labels * max(n_img, 1) + gt_img
    g_order = np.argsort(gt_key, kind="stable")
    return index, gt_key[g_order], gt_boxes[g_order], gt_diff[g_order], positives


def _ranked_detections(detections: Mapping[str, Any], K: int, index: Mapping[str, int], d2_text_rounding: bool
                       ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Phase 2: detections per class in input order, each class then in detectron2's argsort(-score) order.
    Returns (order, its per-class pieces, image index of each detection, boxes as detectron2's text gives them)."""
    boxes = np.asarray(detections.get("boxes", np.zeros((0, 4))))
    labels = np.asarray(detections.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
    n = len(labels)
    if boxes.reshape(-1, 4).shape[0] != n or np.asarray(detections.get("scores", [])).size != n:
        raise UserError("detections need boxes (N,4), scores (N,), labels (N,) and image_ids (N,) of one length N")
    if n and (labels.min() < 0 or labels.max() >= K):
        raise UserError(f"detection labels must be in 0..{K - 1} for {K} classes")
    det_img = _image_indices(detections.get("image_ids", []), index)
    if len(det_img) != n:
        raise UserError("detections need one image id per box")
    boxes, scores = detectron2_text_boxes(boxes, detections["scores"], rounding=d2_text_rounding)
    by_class = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[by_class], np.arange(K + 1))
    pieces = []
    for c in range(K):
        idx = by_class[bounds[c]:bounds[c + 1]]
        pieces.append(idx[np.argsort(-scores[idx])])
    order = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    return order, pieces, det_img, boxes


def _best_overlaps(d_box: np.ndarray, d_key: np.ndarray, gt_key: np.ndarray, gt_boxes: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Phase 3: the IoU of each ranked detection against every GT of its (class, image), all pairs at once.
    Returns (its largest IoU, -inf without GT; the index of the first GT reaching it, -1 without)."""
    n = len(d_key)
    start = np.searchsorted(gt_key, d_key, side="left")
    count = np.searchsorted(gt_key, d_key, side="right") - start
    offs = np.cumsum(count) - count
    total = int(count.sum())
    pair_det = np.repeat(np.arange(n), count)
    pair_gt = start[pair_det] + (np.arange(total) - offs[pair_det])
    bb, gg = d_box[pair_det], gt_boxes[pair_gt]
    iw = np.maximum(np.minimum(gg[:, 2], bb[:, 2]) - np.maximum(gg[:, 0], bb[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gg[:, 3], bb[:, 3]) - np.maximum(gg[:, 1], bb[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = ((bb[:, 2] - bb[:, 0] + 1.0) * (bb[:, 3] - bb[:, 1] + 1.0)
           + (gg[:, 2] - gg[:, 0] + 1.0) * (gg[:, 3] - gg[:, 1] + 1.0) - inters)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inters / uni
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, dtype=np.int64)
    has = np.flatnonzero(count > 0)
    if has.size:
        seg_max = np.maximum.reduceat(iou, offs[has])
        ovmax[has] = seg_max
        hit = np.where(iou == np.repeat(seg_max, count[has]), np.arange(total), total)
        first = np.minimum.reduceat(hit, offs[has])
        ok = first < total  # NaN maxima never pass a threshold, their GT is irrelevant
        jmax[has[ok]] = pair_gt[first[ok]]
    return ovmax, jmax


def _greedy_match(ovmax: np.ndarray, jmax: np.ndarray, gt_diff: np.ndarray, thresholds: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Phase 4: VOC's greedy matching at every threshold at once: a detection is a TP when it is the first, in
    score order, to pass the threshold on its GT; one on a difficult GT is ignored. Returns (tp, ignored)."""
    n = len(ovmax)
    cand = ovmax[None, :] > thresholds[:, None]  # (T, n)
    matched_difficult = np.zeros(n, dtype=bool)
    matched_difficult[jmax >= 0] = gt_diff[jmax[jmax >= 0]]
    ignored = cand & matched_difficult[None, :]
    tp = np.zeros((len(thresholds), n), dtype=bool)
    live = np.flatnonzero((jmax >= 0) & ~matched_difficult)
    if live.size:
        live = live[np.argsort(jmax[live], kind="stable")]  # grouped by GT, rank order inside a group
        g = jmax[live]
        new_group = np.r_[True, g[1:] != g[:-1]]
        group_of = np.cumsum(new_group) - 1
        c = cand[:, live]
        running = np.cumsum(c, axis=1)
        before = (running - c)[:, np.flatnonzero(new_group)][:, group_of]
        tp[:, live] = c & (running - before == 1)  # first candidate of its GT in score order
    return tp, ignored


def match_voc(detections: Mapping[str, Any], ground_truth: GroundTruth, class_names: Sequence[str],
              iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, d2_text_rounding: bool = True) -> VocMatch:
    """TP / difficult flags of every detection at every threshold (inputs as for voc_ap), in four phases."""
    K = len(class_names)
    thresholds = np.asarray([float(t) for t in iou_thresholds], dtype=np.float64)
    if thresholds.size == 0:
        raise UserError("no IoU thresholds given")
    index, gt_key, gt_boxes, gt_diff, positives = _flatten_ground_truth(ground_truth, K)
    order, pieces, det_img, boxes = _ranked_detections(detections, K, index, d2_text_rounding)
    labels = np.asarray(detections.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
    d_key = labels[order] * max(len(index), 1) + det_img[order]
    ovmax, jmax = _best_overlaps(boxes[order], d_key, gt_key, gt_boxes)
    tp, ignored = _greedy_match(ovmax, jmax, gt_diff, thresholds)
    return VocMatch(thresholds, np.r_[0, np.cumsum([len(p) for p in pieces])].astype(np.int64),
                    det_img[order], tp, ignored, positives)


def class_ap(ctp: np.ndarray, cfp: np.ndarray, npos: float, use_07_metric: bool) -> np.ndarray:
    """AP x100 at each threshold of one class from its cumulative TP and FP counts (T, n) in score order."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = ctp / float(npos)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return _ap_rows(rec, prec, use_07_metric) * 100


def ap_table(m: VocMatch, use_07_metric: bool) -> np.ndarray:
    """(T, K) AP x100 of each threshold and class: precision / recall per class, all thresholds together."""
    fp = ~m.tp & ~m.ignored
    npos = m.positives.sum(axis=0)
    table = np.zeros((len(m.thresholds), len(npos)))
    for ci in range(len(npos)):
        a, b = m.class_bounds[ci], m.class_bounds[ci + 1]
        table[:, ci] = class_ap(np.cumsum(m.tp[:, a:b], axis=1, dtype=np.float64),
                                np.cumsum(fp[:, a:b], axis=1, dtype=np.float64), npos[ci], use_07_metric)
    return table


def _summarise(table: np.ndarray, thresholds: np.ndarray, class_names: Sequence[str], npos: np.ndarray,
               use_07_metric: bool) -> dict[str, Any]:
    """detectron2's reduction: mean over classes per threshold, then mean over thresholds."""
    per_thr = [float(np.mean(row)) for row in table]

    def at(value: float, rows: list[float] | np.ndarray) -> float | None:
        hit = np.flatnonzero(np.isclose(thresholds, value, rtol=0, atol=1e-9))
        return float(rows[hit[0]]) if hit.size else None

    per_class = {name: {"AP": float(np.mean(table[:, c])), "AP50": at(0.5, table[:, c]),
                        "AP75": at(0.75, table[:, c])} for c, name in enumerate(class_names)}
    return {
        "AP": float(np.mean(per_thr)), "AP50": at(0.5, per_thr), "AP75": at(0.75, per_thr),
        "per_class": per_class,
        "ap_table": table.tolist(),
        "iou_thresholds": thresholds.tolist(),
        "num_positives": {name: int(npos[c]) for c, name in enumerate(class_names)},
        "classes_without_positives": [name for c, name in enumerate(class_names) if npos[c] == 0],
        "metric": "VOC2007 11-point" if use_07_metric else "area under PR envelope",
    }
