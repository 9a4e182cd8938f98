"""Bootstrap standard errors of VOC AP: exact at the identity draw, equal to voc_ap on a literally resampled
set, centred on the full-set AP, shrinking as 1/sqrt(n), seeded; and their way into results and records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detection.engines.common import detection_record, extract_metrics_se
from detection.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    bootstrap_draws,
    bootstrap_se,
    resampled_ap,
    se_from_results,
    se_result_keys,
    voc_ap_with_se,
)
from detection.evaluation.voc import match_voc, voc_ap
from rimifm.schemas import DetectionRecord, validate_record

CLASSES = ["a", "b", "c"]
KEYS = ("AP", "AP50", "AP75")


def toy(n_images: int, seed: int = 0, num_classes: int = 3) -> tuple[dict, dict]:
    """Random VOC-like ground truth (0-3 objects per image, 15% difficult) and detections: 0-2 jittered hits
    per object (some with a wrong class) with high scores, 0-5 background boxes with low scores."""
    rng = np.random.default_rng(seed)
    gt, ids, boxes, scores, labels = {}, [], [], [], []
    for i in range(n_images):
        m = int(rng.integers(0, 4))
        xy = rng.uniform(1, 150, (m, 2)).round()
        g = np.c_[xy, xy + rng.uniform(20, 80, (m, 2)).round()]
        gl = rng.integers(0, num_classes, m)
        gt[f"im{i}"] = {"boxes": g, "labels": gl, "difficult": rng.random(m) < 0.15}
        src = np.repeat(np.arange(m), rng.integers(0, 3, m))
        hits = g[src] + rng.normal(0, 1, (len(src), 4)) * rng.choice([1.0, 8.0], (len(src), 1))
        hits[:, :2] -= 1
        r = int(rng.integers(0, 6))
        bxy = rng.uniform(0, 150, (r, 2))
        ids += [f"im{i}"] * (len(src) + r)
        boxes.append(np.r_[hits, np.c_[bxy, bxy + rng.uniform(10, 60, (r, 2))]])
        scores.append(np.r_[rng.beta(4, 2, len(src)), rng.beta(1, 4, r)])
        labels.append(np.r_[np.where(rng.random(len(src)) < 0.85, gl[src], rng.integers(0, num_classes, len(src))),
                            rng.integers(0, num_classes, r)])
    return gt, {"image_ids": np.array(ids, dtype=object), "boxes": np.concatenate(boxes),
                "scores": np.concatenate(scores), "labels": np.concatenate(labels).astype(np.int64)}


def literal(gt: dict, dets: dict, counts: np.ndarray) -> tuple[dict, dict]:
    """The test set with image i (ground-truth order) present counts[i] times, each copy under its own id."""
    keys = list(gt)
    copies = {k: int(c) for k, c in zip(keys, counts)}
    g2 = {f"{k}#{j}": gt[k] for k in keys for j in range(copies[k])}
    parts = [(np.flatnonzero(dets["image_ids"] == k), k, j) for k in keys for j in range(copies[k])]
    idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, int)
    ids = np.concatenate([np.full(len(p[0]), f"{p[1]}#{p[2]}", dtype=object) for p in parts])
    return g2, {"image_ids": ids, "boxes": dets["boxes"][idx], "scores": dets["scores"][idx],
                "labels": dets["labels"][idx]}


def repeated(gt: dict, dets: dict, times: int) -> tuple[dict, dict]:
    return literal(gt, dets, np.full(len(gt), times))


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("rounding", [True, False])
def test_identity_draw_reproduces_voc_ap_exactly(use_07_metric: bool, rounding: bool) -> None:
    gt, dets = toy(120, seed=1)
    full = voc_ap(dets, gt, CLASSES, use_07_metric=use_07_metric, d2_text_rounding=rounding)
    m = match_voc(dets, gt, CLASSES, d2_text_rounding=rounding)
    same = resampled_ap(m, np.ones(len(gt), np.int64), CLASSES, use_07_metric)
    assert same["ap_table"] == full["ap_table"]  # bit for bit, score ties (3-decimal rounding) included
    assert [same[k] for k in KEYS] == [full[k] for k in KEYS] and same["num_positives"] == full["num_positives"]


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_identity_draw_on_edge_cases(use_07_metric: bool) -> None:
    box = np.array([[10.0, 10.0, 50.0, 60.0]])
    gt = {"p": {"boxes": box, "labels": np.array([0]), "difficult": np.array([False])},
          "q": {"boxes": np.r_[box, box + 100], "labels": np.array([2, 0]), "difficult": np.array([True, False])},
          "empty": {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "difficult": np.zeros(0, bool)}}
    hit = box - [1, 1, 0, 0]
    # class 0: hits and a duplicate; class 1: detections but no positives; class 2: only a difficult GT matched
    dets = {"image_ids": np.array(["p", "p", "q", "empty", "q"], dtype=object),
            "boxes": np.r_[hit, hit, hit + 100, hit, hit], "scores": np.array([0.9, 0.8, 0.3, 0.5, 0.7]),
            "labels": np.array([0, 0, 0, 1, 2])}
    for d in (dets, {k: v[:0] for k, v in dets.items()}):
        full = voc_ap(d, gt, CLASSES, use_07_metric=use_07_metric)
        same = resampled_ap(match_voc(d, gt, CLASSES), np.ones(3, np.int64), CLASSES, use_07_metric)
        np.testing.assert_array_equal(np.array(same["ap_table"]), np.array(full["ap_table"]))  # NaN == NaN here
    assert np.isnan(voc_ap(dets, gt, CLASSES, use_07_metric=False)["AP"])  # the area metric's NaN is kept


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_a_draw_equals_voc_ap_on_the_literally_resampled_set(use_07_metric: bool) -> None:
    gt, dets = toy(60, seed=2)
    m = match_voc(dets, gt, CLASSES, d2_text_rounding=False)  # continuous scores: no ties but between copies
    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = np.bincount(rng.integers(0, len(gt), len(gt)), minlength=len(gt))
        drawn = resampled_ap(m, counts, CLASSES, use_07_metric)
        g2, d2 = literal(gt, dets, counts)
        direct = voc_ap(d2, g2, CLASSES, use_07_metric=use_07_metric, d2_text_rounding=False)
        assert drawn["num_positives"] == direct["num_positives"]
        np.testing.assert_allclose(drawn["ap_table"], direct["ap_table"], rtol=1e-12, atol=1e-12)
        assert [drawn[k] for k in KEYS] == pytest.approx([direct[k] for k in KEYS], rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_bootstrap_mean_is_near_the_full_ap_and_the_se_positive(use_07_metric: bool) -> None:
    gt, dets = toy(200)
    full = voc_ap(dets, gt, CLASSES, use_07_metric=use_07_metric)
    draws = bootstrap_draws(match_voc(dets, gt, CLASSES), CLASSES, use_07_metric, resamples=200, seed=0)
    assert draws.shape == (200, 3) and np.isfinite(draws).all()
    se = draws.std(axis=0, ddof=1)
    assert (se > 0.5).all() and (se < 10).all(), se  # a few AP points for 200 images
    for j, key in enumerate(KEYS):  # the bootstrap's own bias of AP is a fraction of an SE here
        assert abs(draws[:, j].mean() - full[key]) < se[j], (key, draws[:, j].mean(), full[key], se[j])


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_se_halves_when_the_test_set_is_repeated_4_times(use_07_metric: bool) -> None:
    gt, dets = toy(100)
    one = bootstrap_se(match_voc(dets, gt, CLASSES), CLASSES, use_07_metric, resamples=200)
    g4, d4 = repeated(gt, dets, 4)
    four = bootstrap_se(match_voc(d4, g4, CLASSES), CLASSES, use_07_metric, resamples=200)
    ratios = np.array([four[k] / one[k] for k in KEYS])
    assert ((ratios > 0.3) & (ratios < 0.7)).all(), ratios  # 1/sqrt(4), up to the draws' noise
    assert 0.4 < ratios.mean() < 0.6, ratios


def test_seeded_deterministic_and_shaped_for_the_record() -> None:
    gt, dets = toy(40)
    a = voc_ap_with_se(dets, gt, CLASSES, resamples=30, seed=3)
    assert a["se"] == voc_ap_with_se(dets, gt, CLASSES, resamples=30, seed=3)["se"]
    assert a["se"] != voc_ap_with_se(dets, gt, CLASSES, resamples=30, seed=4)["se"]
    assert set(a["se"]) == {"AP", "AP50", "AP75", "resamples"} and a["se"]["resamples"] == 30
    assert {k: a[k] for k in KEYS} == {k: v for k, v in voc_ap(dets, gt, CLASSES).items() if k in KEYS}
    assert "se" not in voc_ap_with_se(dets, gt, CLASSES, resamples=0)
    assert voc_ap_with_se(dets, gt, CLASSES)["se"]["resamples"] == DEFAULT_RESAMPLES
    # not defined: one draw, no images, a threshold that is not evaluated
    assert voc_ap_with_se(dets, gt, CLASSES, resamples=1)["se"] == {"AP": None, "AP50": None, "AP75": None,
                                                                    "resamples": 1}
    empty = voc_ap_with_se({k: v[:0] for k, v in dets.items()}, {}, CLASSES, resamples=10)
    assert empty["se"] == {"AP": None, "AP50": None, "AP75": None, "resamples": 0}
    only_50 = voc_ap_with_se(dets, gt, CLASSES, iou_thresholds=[0.5], resamples=10)["se"]
    assert only_50["AP75"] is None and only_50["AP50"] == only_50["AP"] > 0


# ----------------------------------------------------------------------------- results and records


def test_engine_results_carry_the_se_into_the_detection_record(tmp_path: Path) -> None:
    from detection.engines.torchvision.config import build_cfg

    se = {"AP": 1.25, "AP50": 2.5, "AP75": None, "resamples": 200}
    bbox = {"AP": 40.0, "AP50": 70.0, "AP75": 38.0, **se_result_keys(se)}
    assert bbox == {"AP": 40.0, "AP50": 70.0, "AP75": 38.0, "AP_se": 1.25, "AP50_se": 2.5, "se_resamples": 200}
    assert se_from_results(bbox) == se and se_from_results({"AP": 40.0}) is None and se_result_keys(None) == {}
    assert extract_metrics_se({"bbox": bbox}, ["t"]) == se == extract_metrics_se({"t": {"bbox": bbox}}, ["t"])
    cfg = build_cfg("synthetic_r18_c4.yaml", ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "det"),
                                              "MODEL.WEIGHTS", "", "DATASETS.TEST", "('synthetic_test',)"])
    written = detection_record(cfg, engine="torchvision", results={"synthetic_test": {"bbox": bbox}},
                               iterations=10, wall_time_s=1.0, seed=0, eval_only=True)
    rec = validate_record(json.loads(json.dumps(written)), "det/record.json")
    assert isinstance(rec, DetectionRecord) and rec.metrics == {"AP": 40.0, "AP50": 70.0, "AP75": 38.0}
    assert rec.metrics_se == se
    coco = detection_record(cfg, engine="torchvision", results={"bbox": {"AP": 40.0, "APs": 1.0}},
                            iterations=10, wall_time_s=1.0, seed=0, eval_only=True)
    assert "metrics_se" not in coco  # pycocotools results: no standard errors, the key is left out
