"""Engine-independent evaluation glue: predictions -> VOC AP, and the COCO-results JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detection.datasets import read_voc_split
from detection.engines.common import extract_metrics
from detection.evaluation.coco_results import evaluate_coco_results_file
from detection.evaluation.predictions import (
    coco_results,
    evaluate_voc_predictions,
    make_prediction,
    stack_predictions,
    write_coco_results,
)
from rimifm.errors import UserError
from synthetic.generator import CLASSES, generate


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("det_eval") / "synthetic"
    generate(root, seed=1, pretrain_images=1, cls_train_per_class=1, cls_val_per_class=1, det_trainval=1,
             det_test=5, det_image_size=64)
    return root / "detection" / "VOC2007"


def _perfect(voc: Path) -> list[dict]:
    """Every ground-truth box (difficult ones too) predicted exactly, score 1."""
    return [make_prediction(r["image_id"], [a["bbox"] for a in r["annotations"]], [1.0] * len(r["annotations"]),
                            [a["category_id"] for a in r["annotations"]])
            for r in read_voc_split(voc, "test", CLASSES)]


def _noisy(voc: Path, seed: int = 0) -> list[dict]:
    """Jittered ground truth, some wrong labels, plus random boxes; coordinates on a 1/4-pixel grid."""
    rng = np.random.default_rng(seed)
    out = []
    for p in _perfect(voc):
        n = len(p["scores"])
        boxes = np.concatenate([p["boxes"] + rng.normal(0, 3, (n, 4)), rng.uniform(0, 32, (3, 4))])
        boxes[:, 2:] = boxes[:, :2] + np.abs(boxes[:, 2:] - boxes[:, :2]) + 2
        labels = np.concatenate([np.where(rng.random(n) < 0.2, (p["labels"] + 1) % 6, p["labels"]),
                                 rng.integers(0, 6, 3)])
        out.append(make_prediction(p["image_id"], np.round(boxes * 4) / 4, rng.random(n + 3).round(3), labels))
    return out


def test_perfect_predictions_score_100(voc: Path) -> None:
    res = evaluate_voc_predictions(_perfect(voc), voc, "test", 2007, CLASSES)
    positives = {k: v for k, v in res["num_positives"].items() if v}
    assert positives and res["metric"] == "VOC2007 11-point"
    for name in positives:
        assert res["per_class"][name]["AP"] == pytest.approx(100.0)


def test_noisy_predictions_score_between_0_and_100(voc: Path) -> None:
    res = evaluate_voc_predictions(_noisy(voc), voc, "test", 2007, CLASSES)
    assert 0 < res["AP"] < res["AP50"] <= 100
    assert res["se"]["resamples"] == 200 and res["se"]["AP"] > 0  # bootstrap over the 5 test images
    assert "se" not in evaluate_voc_predictions(_noisy(voc), voc, "test", 2007, CLASSES, resamples=0)


def test_coco_results_json_round_trip_gives_the_same_ap(voc: Path, tmp_path: Path) -> None:
    preds = _noisy(voc, seed=3)
    path = write_coco_results(tmp_path / "dets.json", preds)
    entries = json.loads(path.read_text())
    assert len(entries) == sum(len(p["scores"]) for p in preds)
    assert {e["category_id"] for e in entries} <= set(range(1, 7))
    assert isinstance(entries[0]["image_id"], str)
    direct = evaluate_voc_predictions(preds, voc, "test", 2007, CLASSES)
    again = evaluate_coco_results_file(path, voc, split="test", year=2007, class_names=CLASSES)
    for key in ("AP", "AP50", "AP75"):
        assert again[key] == direct[key]


def test_coco_results_boxes_and_category_mapping() -> None:
    p = make_prediction(7, [[1.5, 2.0, 11.5, 22.0]], [0.5], [2])
    (entry,) = coco_results([p], category_ids=[1, 3, 5])
    assert entry == {"image_id": 7, "category_id": 5, "bbox": [1.5, 2.0, 10.0, 20.0], "score": 0.5}
    with pytest.raises(UserError, match="predicted class 2 has no category id"):
        coco_results([p], category_ids=[1, 3])


def test_stack_predictions_keeps_order_and_handles_empty() -> None:
    a = make_prediction("a", np.zeros((2, 4)), [0.1, 0.2], [0, 1])
    b = make_prediction("b", np.zeros((0, 4)), [], [])
    c = make_prediction("c", np.ones((1, 4)), [0.3], [2])
    s = stack_predictions([a, b, c])
    assert s["image_ids"].tolist() == ["a", "a", "c"]
    assert s["scores"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert s["boxes"].shape == (3, 4) and s["labels"].tolist() == [0, 1, 2]
    empty = stack_predictions([])
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)


def test_extract_metrics_accepts_both_result_shapes() -> None:
    one = {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}}
    assert extract_metrics(one, ["voc_2007_test"]) == {"voc_2007_test": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}}
    two = {"a": {"bbox": {"AP": 1.0, "AP50": 2.0, "AP75": 3.0}}, "b": {"bbox": {"AP": 4.0}}}
    assert extract_metrics(two, ["a", "b"]) == {"a": {"AP": 1.0, "AP50": 2.0, "AP75": 3.0}, "b": {"AP": 4.0}}
    assert extract_metrics(None, ["a"]) == {} and extract_metrics({}, ["a"]) == {}
