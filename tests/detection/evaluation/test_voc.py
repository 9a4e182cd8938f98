"""VOC AP: hand-computed cases, agreement with a literal detectron2-style loop, files and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.voc_reference import reference_voc_eval
from detection.evaluation import (
    DEFAULT_IOU_THRESHOLDS,
    evaluate_coco_results_file,
    read_voc_annotations,
    voc_ap,
)
from detection.evaluation.voc import _round_decimals, detectron2_text_boxes
from rimifm.errors import UserError
from tests.helpers import REPO

SHAPES = ["circle", "square", "triangle", "star", "cross", "hexagon"]


# ----------------------------------------------------------------------------- helpers


def gt_of(objects: dict[str, list[tuple]]) -> dict:
    """{image: [(label, (xmin, ymin, xmax, ymax) as in XML, difficult)]} -> voc_ap ground truth."""
    out = {}
    for image, objs in objects.items():
        out[image] = {"boxes": np.array([o[1] for o in objs], dtype=float).reshape(-1, 4),
                      "labels": np.array([o[0] for o in objs], dtype=np.int64),
                      "difficult": np.array([o[2] for o in objs], dtype=bool)}
    return out


def dets_of(items: list[tuple]) -> dict:
    """[(image, label, XML-style box, score)] -> detections; the box is given as detectron2 predicts it
    (x0 = xmin - 1, y0 = ymin - 1), so an exact hit reproduces the XML numbers."""
    return {"image_ids": np.array([i[0] for i in items], dtype=object),
            "boxes": np.array([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, _, b, _ in items], dtype=float).reshape(-1, 4),
            "scores": np.array([i[3] for i in items], dtype=float),
            "labels": np.array([i[1] for i in items], dtype=np.int64)}


def both(dets, gt, classes, **kw):
    return (voc_ap(dets, gt, classes, use_07_metric=True, **kw),
            voc_ap(dets, gt, classes, use_07_metric=False, **kw))


G1, G2, G3 = (10, 10, 50, 60), (100, 20, 180, 90), (30, 120, 90, 200)


# ----------------------------------------------------------------------------- hand-computed cases


def test_perfect_detections_give_100():
    gt = gt_of({"a": [(0, G1, False), (1, G2, False)], "b": [(0, G3, False)], "c": []})
    dets = dets_of([("a", 0, G1, 0.9), ("a", 1, G2, 0.8), ("b", 0, G3, 0.7)])
    for res in both(dets, gt, ["x", "y"]):
        assert res["AP"] == pytest.approx(100) and res["AP50"] == pytest.approx(100)
        assert res["AP75"] == pytest.approx(100)
        assert np.allclose(res["ap_table"], 100)


def test_false_positive_ranked_above_true_positive():
    # FP (0.9) then TP (0.8): rec = [0, 1], prec = [0, 0.5] -> AP 50 with both metrics
    gt = gt_of({"a": [(0, G1, False)]})
    dets = dets_of([("a", 0, G2, 0.9), ("a", 0, G1, 0.8)])
    for res in both(dets, gt, ["x"]):
        assert res["AP"] == pytest.approx(50) and res["AP50"] == pytest.approx(50)


def test_detection_on_difficult_gt_is_ignored():
    # the hit on the difficult GT is neither TP nor FP: AP stays 100 (it would be 50 as a FP)
    gt = gt_of({"a": [(0, G1, False), (0, G2, True)]})
    dets = dets_of([("a", 0, G2, 0.9), ("a", 0, G1, 0.8)])
    for res in both(dets, gt, ["x"]):
        assert res["AP"] == pytest.approx(100)
        assert res["num_positives"] == {"x": 1}


def test_duplicate_is_false_positive_and_metrics_differ():
    # TP g1 (0.9), duplicate g1 (0.8), TP g2 (0.7): rec = [.5, .5, 1], prec = [1, .5, 2/3]
    # 11-point: (6 * 1 + 5 * 2/3) / 11 = 84.848...; area: .5 * 1 + .5 * 2/3 = 83.333...
    gt = gt_of({"a": [(0, G1, False), (0, G2, False)]})
    dets = dets_of([("a", 0, G1, 0.9), ("a", 0, G1, 0.8), ("a", 0, G2, 0.7)])
    r07, r12 = both(dets, gt, ["x"])
    assert r07["AP"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)
    assert r12["AP"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    assert r07["metric"] != r12["metric"]


def test_best_gt_already_taken_means_false_positive():
    # the 2nd detection overlaps g1 best (already matched) and g1b less: still a FP, no fall-back
    g1b = (10, 10, 50, 56)
    gt = gt_of({"a": [(0, G1, False), (0, g1b, False)]})
    dets = dets_of([("a", 0, G1, 0.9), ("a", 0, (10, 10, 50, 59), 0.8)])
    res = voc_ap(dets, gt, ["x"], iou_thresholds=[0.5])
    # rec = [.5, .5], prec = [1, .5]: 11-point 6/11
    assert res["AP"] == pytest.approx(100 * 6 / 11)


def test_inclusive_pixels_and_strict_threshold():
    # XML GT (1,1,10,10) has 10x10 pixels; the detection written as (1,1,10,6) has 10x6 -> IoU 0.6 exactly,
    # a TP at 0.50 and 0.55 but not at 0.60 (strict >) and above
    gt = gt_of({"a": [(0, (1, 1, 10, 10), False)]})
    dets = dets_of([("a", 0, (1, 1, 10, 6), 0.5)])
    res = voc_ap(dets, gt, ["x"])
    assert [row[0] for row in res["ap_table"]] == pytest.approx([100, 100] + [0] * 8)  # 11 x (1/11): not exactly 1
    assert res["AP"] == pytest.approx(20) and res["AP50"] == pytest.approx(100) and res["AP75"] == 0


def test_mean_over_classes_and_empty_class():
    gt = gt_of({"a": [(0, G1, False), (1, G2, False)]})
    dets = dets_of([("a", 0, G1, 0.9)])  # class 1 has no detection -> AP 0
    res = voc_ap(dets, gt, ["x", "y"])
    assert res["AP"] == pytest.approx(50)
    assert res["per_class"]["x"]["AP50"] == pytest.approx(100) and res["per_class"]["y"]["AP"] == 0


def test_class_without_positives_follows_detectron2_formula():
    gt = gt_of({"a": [(0, G1, False), (1, G2, True)]})
    dets = dets_of([("a", 0, G1, 0.9), ("a", 1, G2, 0.9)])
    r07, r12 = both(dets, gt, ["x", "y"])
    assert r07["classes_without_positives"] == ["y"]
    assert r07["per_class"]["y"]["AP"] == 0 and r07["AP"] == pytest.approx(50)
    assert np.isnan(r12["per_class"]["y"]["AP"])


def test_detection_rounding_like_detectron2_text_files():
    boxes, scores = detectron2_text_boxes(np.array([[0.25, 4.04, 9.95, 10.05]], np.float32), np.array([0.12345]))
    assert boxes.tolist() == [[float(f"{np.float32(1.25):.1f}"), float(f"{np.float32(5.04):.1f}"),
                               float(f"{np.float32(9.95):.1f}"), float(f"{np.float32(10.05):.1f}")]]
    assert scores.tolist() == [0.123]
    raw, _ = detectron2_text_boxes(np.array([[0.25, 4.04, 9.95, 10.05]]), np.array([0.1]), rounding=False)
    assert raw.tolist() == [[1.25, 5.04, 9.95, 10.05]]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-10, 1000, 20000), np.arange(0, 50, 0.05), np.arange(0, 50, 0.25)])
    for v in (x, x.astype(np.float32).astype(np.float64)):
        for digits in (1, 3):
            assert np.array_equal(_round_decimals(v, digits), [float(f"{t:.{digits}f}") for t in v])


def test_bad_detection_inputs():
    gt = gt_of({"a": [(0, G1, False)]})
    with pytest.raises(UserError, match="'zz'"):
        voc_ap(dets_of([("zz", 0, G1, 0.9)]), gt, ["x"])
    with pytest.raises(UserError, match="labels"):
        voc_ap(dets_of([("a", 3, G1, 0.9)]), gt, ["x"])


# ----------------------------------------------------------------------------- against the literal loop


def random_case(seed: int, n_images: int = 250, num_classes: int = 6) -> tuple[dict, dict]:
    """Random GT (some difficult, some empty images, one class never present) and detections around them."""
    rng = np.random.default_rng(seed)
    gt, ids, boxes, scores, labels = {}, [], [], [], []
    for i in range(n_images):
        m = int(rng.integers(0, 6))
        xy = rng.integers(1, 300, (m, 2)).astype(float)
        wh = rng.integers(4, 120, (m, 2)).astype(float)
        lab = rng.integers(0, num_classes - 1, m)  # the last class never has GT
        gt[f"{i:06d}"] = {"boxes": np.c_[xy, xy + wh], "labels": lab, "difficult": rng.random(m) < 0.2}
        for _ in range(int(rng.integers(0, 25))):
            if m and rng.random() < 0.6:
                j = int(rng.integers(m))
                b = gt[f"{i:06d}"]["boxes"][j] + rng.normal(0, rng.choice([1.0, 6.0]), 4)
                b[:2] -= 1
                c = lab[j] if rng.random() < 0.85 else rng.integers(num_classes)
            else:
                p = rng.uniform(0, 300, 2)
                b, c = np.r_[p, p + rng.uniform(3, 120, 2)], rng.integers(num_classes)
            ids.append(f"{i:06d}")
            boxes.append(b)
            # coarse scores give many ties; float32 like a model's
            scores.append(np.float32(rng.integers(0, 40) / 40 if rng.random() < 0.5 else rng.random()))
            labels.append(c)
    dets = {"image_ids": np.array(ids, dtype=object), "boxes": np.array(boxes, dtype=np.float32),
            "scores": np.array(scores, dtype=np.float64), "labels": np.array(labels, dtype=np.int64)}
    return gt, dets


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("rounding", [True, False])
def test_matches_literal_reference_on_random_data(seed, use_07_metric, rounding):
    gt, dets = random_case(seed)
    classes = SHAPES
    ours = voc_ap(dets, gt, classes, use_07_metric=use_07_metric, d2_text_rounding=rounding)
    ref = reference_voc_eval(dets, gt, classes, use_07_metric=use_07_metric, d2_text_rounding=rounding)
    a, b = np.array(ours["ap_table"]), np.array(ref["ap_table"])
    assert a.shape == (len(DEFAULT_IOU_THRESHOLDS), len(classes))
    assert np.allclose(a, b, rtol=0, atol=1e-6, equal_nan=True)
    finite = a[:, :-1]
    assert 5 < finite.mean() < 95  # a non-trivial case
    if use_07_metric:
        for key in ("AP", "AP50", "AP75"):
            assert ours[key] == pytest.approx(ref[key], abs=1e-6)
    else:  # the class without GT is NaN in both, as in detectron2
        assert np.isnan(ours["AP"]) and np.isnan(ref["AP"])


def test_matches_reference_with_custom_thresholds_and_no_detections():
    gt, dets = random_case(3, n_images=60)
    ours = voc_ap(dets, gt, SHAPES, iou_thresholds=[0.3, 0.5, 0.7])
    ref = reference_voc_eval(dets, gt, SHAPES, iou_thresholds=[0.3, 0.5, 0.7])
    assert np.allclose(ours["ap_table"], ref["ap_table"], atol=1e-6) and ours["AP75"] is None
    empty = {"image_ids": np.array([], dtype=object), "boxes": np.zeros((0, 4)), "scores": np.zeros(0),
             "labels": np.zeros(0, np.int64)}
    for m07 in (True, False):
        r = voc_ap(empty, gt, SHAPES, use_07_metric=m07)
        assert r["AP"] == 0 and r["ap_table"] == reference_voc_eval(empty, gt, SHAPES, use_07_metric=m07)["ap_table"]


# ----------------------------------------------------------------------------- files


def write_voc(root: Path, images: dict[str, list[tuple[str, tuple, int]]], split: str = "test",
              omit_tags: bool = False) -> Path:
    voc = root / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objs in images.items():
        parts = ["<annotation>", f"<filename>{image_id}.jpg</filename>"]
        for name, (x0, y0, x1, y1), diff in objs:
            extra = "" if omit_tags else "<pose>Unspecified</pose><truncated>0</truncated>"
            parts.append(f"<object><name>{name}</name>{extra}<difficult>{diff}</difficult><bndbox>"
                         f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
        parts.append("</annotation>")
        (voc / "Annotations" / f"{image_id}.xml").write_text("\n".join(parts))
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return voc


TINY = {"000001": [("circle", G1, 0), ("square", G2, 0)],
        "000002": [("circle", G3, 0), ("star", (5, 5, 40, 40), 1)],
        "000003": []}


def coco_dets(items: list[tuple]) -> list[dict]:
    """[(image_id, class index, XML box, score)] -> COCO results with bbox [xmin-1, ymin-1, w, h]."""
    return [{"image_id": img, "category_id": c + 1, "score": s,
             "bbox": [b[0] - 1.0, b[1] - 1.0, float(b[2] - b[0] + 1), float(b[3] - b[1] + 1)]}
            for img, c, b, s in items]


def test_read_voc_annotations(tmp_path):
    write_voc(tmp_path, TINY, omit_tags=True)
    for root in (tmp_path, tmp_path / "VOC2007"):
        gt = read_voc_annotations(root, "test", 2007, SHAPES)
        assert list(gt) == ["000001", "000002", "000003"]
        assert gt["000001"]["boxes"].tolist() == [list(map(float, G1)), list(map(float, G2))]
        assert gt["000002"]["labels"].tolist() == [0, 3] and gt["000002"]["difficult"].tolist() == [False, True]
        assert gt["000003"]["boxes"].shape == (0, 4)


def test_coco_results_file(tmp_path):
    write_voc(tmp_path, TINY)
    items = [(1, 0, G1, 0.9), ("000001", 1, G2, 0.8), (2, 0, G3, 0.7), (2, 3, (5, 5, 40, 40), 0.6),
             (3, 2, G1, 0.95)]  # the last one is a FP of "triangle", a class without GT
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(coco_dets(items)))
    res = evaluate_coco_results_file(path, tmp_path, split="test", year=2007, class_names=SHAPES)
    assert res["per_class"]["circle"]["AP"] == pytest.approx(100)
    assert res["per_class"]["square"]["AP"] == pytest.approx(100)
    assert res["per_class"]["star"]["AP"] == 0  # only a difficult GT: no positives
    assert res["AP"] == pytest.approx(200 / 6)
    direct = voc_ap(dets_of([(f"{i:06d}" if isinstance(i, int) else i, c, b, s) for i, c, b, s in items]),
                    read_voc_annotations(tmp_path, "test", 2007, SHAPES), SHAPES)
    assert res["ap_table"] == direct["ap_table"]


def test_file_errors(tmp_path):
    voc = write_voc(tmp_path, TINY)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(coco_dets([(1, 0, G1, 0.9)])))
    with pytest.raises(UserError, match="000002.xml.*unknown class 'star'"):
        read_voc_annotations(tmp_path, "test", 2007, ["circle", "square"])
    with pytest.raises(UserError, match="test2.txt"):
        evaluate_coco_results_file(dets, tmp_path, split="test2", class_names=SHAPES)
    with pytest.raises(UserError, match=r"image_id 9"):
        dets2 = tmp_path / "d2.json"
        dets2.write_text(json.dumps(coco_dets([(9, 0, G1, 0.9)])))
        evaluate_coco_results_file(dets2, tmp_path, class_names=SHAPES)
    with pytest.raises(UserError, match="category_id 7"):
        dets2.write_text(json.dumps(coco_dets([(1, 6, G1, 0.9)])))
        evaluate_coco_results_file(dets2, tmp_path, class_names=SHAPES)
    with pytest.raises(UserError, match="does not exist"):
        evaluate_coco_results_file(tmp_path / "none.json", tmp_path, class_names=SHAPES)
    (voc / "Annotations" / "000002.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match="000002.xml.*not valid XML"):
        read_voc_annotations(tmp_path, "test", 2007, SHAPES)
    (voc / "Annotations" / "000002.xml").write_text(
        "<annotation><object><name>circle</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(UserError, match="000002.xml.*malformed"):
        read_voc_annotations(tmp_path, "test", 2007, SHAPES)
    (voc / "Annotations" / "000002.xml").unlink()
    with pytest.raises(UserError, match="000002.xml does not exist"):
        read_voc_annotations(tmp_path, "test", 2007, SHAPES)
    with pytest.raises(UserError, match="no VOC folder"):
        read_voc_annotations(tmp_path / "nowhere", "test", 2007, SHAPES)


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/eval_detections.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_voc_and_coco(tmp_path):
    write_voc(tmp_path, TINY)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(coco_dets([(1, 0, G1, 0.9), (1, 1, G2, 0.8), (2, 0, G3, 0.7)])))
    out = tmp_path / "m" / "metrics.json"
    res = _cli(str(dets), "--voc", str(tmp_path / "VOC2007"), "--split", "test", "--year", "2007",
               "--classes", ",".join(SHAPES), "--out", str(out))
    assert res.returncode == 0, res.stderr
    metrics = json.loads(out.read_text())
    assert metrics["AP"] == pytest.approx(200 / 6) and metrics["AP50"] == pytest.approx(200 / 6)
    assert "AP 33.33" in res.stdout
    assert metrics["metrics_se"]["resamples"] == 200 and metrics["metrics_se"]["AP"] > 0  # bootstrap over images
    assert "standard errors (bootstrap over images, 200 draws): AP " in res.stdout
    res = _cli(str(dets), "--voc", str(tmp_path / "VOC2007"), "--classes", ",".join(SHAPES), "--bootstrap", "0",
               "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "metrics_se" not in json.loads(out.read_text()) and "standard errors" not in res.stdout

    # COCO annotations for the same three images: perfect detections -> 100 with pycocotools
    coco = {"images": [{"id": i, "width": 300, "height": 300, "file_name": f"{i:06d}.jpg"} for i in (1, 2, 3)],
            "annotations": [{"id": k + 1, "image_id": d["image_id"], "category_id": d["category_id"],
                             "bbox": d["bbox"], "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
                            for k, d in enumerate(json.loads(dets.read_text()))],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]}
    ann = tmp_path / "instances_test.json"
    ann.write_text(json.dumps(coco))
    res = _cli(str(dets), "--coco", str(ann), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["AP"] == pytest.approx(100)
    assert res.stdout.strip().splitlines() == ["coco-bbox: AP 100.00  AP50 100.00  AP75 100.00"]

    res = _cli(str(dets), "--voc", str(tmp_path), "--out", str(tmp_path / "bad.json"))  # 20 VOC classes: circle unknown
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert "unknown class 'circle'" in res.stderr and not (tmp_path / "bad.json").exists()
