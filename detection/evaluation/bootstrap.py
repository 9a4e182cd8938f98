"""Standard errors of the VOC AP metrics from a bootstrap over test images.

A run's AP is a statistic of its test set. Its standard error (what another test set of the same
size drawn from the same distribution would change) is estimated by drawing the test images with
replacement `resamples` times (seeded, so deterministic) and taking the standard deviation
(ddof=1) of AP, AP50 and AP75 (x100, the units of the metrics) over the draws. An image drawn k
times counts k times: its detections and its non-difficult ground-truth positives alike. Each
draw's metrics are voc_ap's definition applied to the resampled set (per class and threshold,
then `voc._summarise`'s means); e.g. a class whose positives were all left out of a draw gets 0
with the 11-point metric, like voc_ap.

Speed: the matching is done once (`voc.match_voc`). A detection is matched only against the GT of
its own image, in score order, so its TP / difficult flags are the same in every draw; a draw only
re-weights counts. Per class, the cumulative TP and FP counts along the full set's score order
become weighted sums (score ties between images keep the full set's order). AP is computed
(`voc.class_ap`, `voc._ap_rows`) only at the rows where a detection is a TP or matched a difficult
GT at some threshold, and whose image was drawn: every other row is a FP or has weight 0, so its
point on the PR curve has the recall of the row before it and no higher precision; dropping it
changes neither the 11-point AP nor the area under the precision envelope as long as the FP count
it adds is kept in the later rows. A detection drawn k times is one row of weight k; its k copies
in a row would give points that the envelope ignores likewise. With every image drawn once the
numbers equal voc_ap's exactly, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detection.evaluation.voc import (
    DEFAULT_IOU_THRESHOLDS,
    GroundTruth,
    VocMatch,
    _summarise,
    ap_table,
    class_ap,
    match_voc,
)

#: draws when a caller does not say; 200 take ~8-13 s (11-point; ~6 s area) on a VOC07-test-sized set
DEFAULT_RESAMPLES = 200
SE_KEYS = ("AP", "AP50", "AP75")
#: keys of the standard errors inside an engine's {"bbox": {...}} results (flat numbers, as detectron2 wants)
RESULT_KEYS = {"AP": "AP_se", "AP50": "AP50_se", "AP75": "AP75_se", "resamples": "se_resamples"}


class _Rows:
    """The rows of a VocMatch that the AP depends on (TP or difficult at some threshold), prepared once."""

    def __init__(self, m: VocMatch):
        self.m = m
        kept = np.flatnonzero((m.tp | m.ignored).any(axis=0))
        self.kept = kept
        self.kept_bounds = np.searchsorted(kept, m.class_bounds)
        self.tp = m.tp[:, kept].astype(np.int64)
        self.ignored = m.ignored[:, kept].astype(np.int64)


def resampled_table(rows: _Rows, counts: np.ndarray, use_07_metric: bool) -> np.ndarray:
    """(T, K) AP x100 of the test set in which image i appears counts[i] times."""
    m = rows.m
    T, K = len(m.thresholds), m.positives.shape[1]
    counts = np.asarray(counts, dtype=np.int64)
    w_all = counts[m.det_image]
    cw = np.r_[0, np.cumsum(w_all)]  # cw[j]: weight of detections 0..j-1 (all classes, class-grouped order)
    w = w_all[rows.kept]
    drawn = np.flatnonzero(w > 0)  # rows of images not drawn are no points of this draw's curves
    w, bounds = w[drawn], np.searchsorted(drawn, rows.kept_bounds)
    ctp_all = np.cumsum(rows.tp[:, drawn] * w, axis=1)  # integers: exact, whatever the order of the sums
    cig_all = np.cumsum(rows.ignored[:, drawn] * w, axis=1)
    cw_kept = cw[rows.kept[drawn] + 1]
    npos = counts @ m.positives
    table = np.zeros((T, K))
    zero = np.zeros(T, dtype=np.int64)
    for c in range(K):
        a, b = bounds[c], bounds[c + 1]
        start = m.class_bounds[c]
        tp0 = ctp_all[:, a - 1] if a > 0 else zero
        ig0 = cig_all[:, a - 1] if a > 0 else zero
        ctp = ctp_all[:, a:b] - tp0[:, None]
        cfp = (cw_kept[a:b] - cw[start])[None, :] - ctp - (cig_all[:, a:b] - ig0[:, None])
        table[:, c] = class_ap(ctp.astype(np.float64), cfp.astype(np.float64), npos[c], use_07_metric)
        if npos[c] == 0 and not use_07_metric and cw[m.class_bounds[c + 1]] > cw[start]:
            table[:, c] = np.nan  # voc_ap's area metric: NaN for a class with detections but no positives
    return table


def resampled_ap(m: VocMatch, counts: np.ndarray, class_names: Sequence[str],
                 use_07_metric: bool = True) -> dict[str, Any]:
    """voc_ap's results for the test set in which image i (ground-truth key order) appears counts[i] times."""
    counts = np.asarray(counts, dtype=np.int64)
    table = resampled_table(_Rows(m), counts, use_07_metric)
    return _summarise(table, m.thresholds, class_names, counts @ m.positives, use_07_metric)


def bootstrap_draws(m: VocMatch, class_names: Sequence[str], use_07_metric: bool = True,
                    resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, 3) AP, AP50, AP75 (x100; NaN where voc_ap would give None or NaN) of each draw.

    Draw r picks n of the n images uniformly with replacement from `np.random.default_rng(seed)`.
    """
    n_img = m.positives.shape[0]
    rows = _Rows(m)
    rng = np.random.default_rng(seed)
    vals = np.full((max(int(resamples), 0), len(SE_KEYS)), np.nan)
    for r in range(len(vals)):
        counts = np.bincount(rng.integers(0, n_img, n_img), minlength=n_img)
        table = resampled_table(rows, counts, use_07_metric)
        s = _summarise(table, m.thresholds, class_names, counts @ m.positives, use_07_metric)
        vals[r] = [np.nan if s[k] is None else s[k] for k in SE_KEYS]
    return vals


def bootstrap_se(m: VocMatch, class_names: Sequence[str], use_07_metric: bool = True,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """{"AP", "AP50", "AP75": standard error x100 (None when not defined), "resamples": draws made}.

    A metric's SE is the std (ddof=1) over the draws where it is finite (a draw can give NaN only
    with the area metric, for a class with detections but none of its positives drawn); None with
    fewer than 2 such draws, with no images, or for a threshold that is not evaluated.
    """
    resamples = max(int(resamples), 0) if m.positives.shape[0] else 0
    vals = bootstrap_draws(m, class_names, use_07_metric, resamples, seed)
    out: dict[str, Any] = {}
    for j, key in enumerate(SE_KEYS):
        v = vals[:, j][np.isfinite(vals[:, j])]
        out[key] = float(np.std(v, ddof=1)) if len(v) >= 2 else None
    out["resamples"] = resamples
    return out


def voc_ap_with_se(detections: Mapping[str, Any], ground_truth: GroundTruth, class_names: Sequence[str],
                   iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, use_07_metric: bool = True,
                   d2_text_rounding: bool = True, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> dict[str, Any]:
    """voc_ap's results (matching done once) plus "se": bootstrap_se's dict (absent when resamples is 0)."""
    m = match_voc(detections, ground_truth, class_names, iou_thresholds, d2_text_rounding)
    res = _summarise(ap_table(m, use_07_metric), m.thresholds, class_names, m.positives.sum(axis=0), use_07_metric)
    if resamples:
        res["se"] = bootstrap_se(m, class_names, use_07_metric, resamples=resamples, seed=seed)
    return res


def se_result_keys(se: Mapping[str, Any] | None) -> dict[str, float | int]:
    """The standard errors as flat keys of an engine's bbox results ("AP_se", ..., "se_resamples");
    undefined ones are left out (detectron2 formats every value there as a number)."""
    if not se:
        return {}
    return {RESULT_KEYS[k]: se[k] for k in (*SE_KEYS, "resamples") if se.get(k) is not None}


def se_from_results(bbox: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The record's `metrics_se` from an engine's bbox results, or None when they carry no standard errors."""
    if not isinstance(bbox, Mapping) or not any(RESULT_KEYS[k] in bbox for k in SE_KEYS):
        return None
    out: dict[str, Any] = {k: (float(bbox[RESULT_KEYS[k]]) if bbox.get(RESULT_KEYS[k]) is not None else None)
                           for k in SE_KEYS}
    n = bbox.get(RESULT_KEYS["resamples"])
    out["resamples"] = None if n is None else int(n)
    return out
