"""detectron2 evaluators: VOC AP with our vectorised evaluator, COCO AP with detectron2's COCOEvaluator.

Import only when detectron2 is installed. `VOCEvaluator` gives the numbers of detectron2's
PascalVOCDetectionEvaluator (same definition, same tie order) without its per-class text files
and Python loops, and also writes the predictions as a COCO results JSON.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Any

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm

from detection.evaluation.bootstrap import se_result_keys
from detection.evaluation.predictions import (
    RESULTS_FILE,
    evaluate_voc_predictions,
    make_prediction,
    write_coco_results,
)
from rimifm.errors import UserError
from rimifm.io import atomic_write_text

logger = logging.getLogger(__name__)


class VOCEvaluator(DatasetEvaluator):
    """AP, AP50, AP75 of a VOC-type dataset (metadata: dirname, split, year, thing_classes)."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True) -> None:
        meta = MetadataCatalog.get(dataset_name)
        for key in ("dirname", "split", "year", "thing_classes"):
            if not hasattr(meta, key):
                raise UserError(f"dataset {dataset_name} has no metadata {key!r}; it is not a VOC-type dataset")
        if meta.year not in (2007, 2012):
            raise UserError(f"dataset {dataset_name}: VOC year must be 2007 or 2012, got {meta.year}")
        self._name = dataset_name
        self._meta = meta
        self._output_dir = output_dir
        self._distributed = distributed
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            self._predictions.append(make_prediction(inp["image_id"], inst.pred_boxes.tensor.numpy(),
                                                     inst.scores.numpy(), inst.pred_classes.numpy()))

    def evaluate(self) -> OrderedDict:
        if self._distributed:
            comm.synchronize()
            per_rank = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            predictions = [p for rank in per_rank for p in rank]  # rank order, as detectron2 concatenates
        else:
            predictions = self._predictions
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            write_coco_results(os.path.join(self._output_dir, RESULTS_FILE), predictions)
        meta = self._meta
        res = evaluate_voc_predictions(predictions, meta.dirname, meta.split, meta.year, meta.thing_classes)
        logger.info("%s (%s, %d images): AP %.2f AP50 %.2f AP75 %.2f", self._name, res["metric"],
                    len(predictions), res["AP"], res["AP50"], res["AP75"])
        if self._output_dir:
            saved = ("AP", "AP50", "AP75", "per_class", "metric", "num_positives", "se")
            atomic_write_text(os.path.join(self._output_dir, "voc_metrics.json"),
                              json.dumps({k: res[k] for k in saved if k in res}, indent=2) + "\n")
        # bootstrap standard errors as flat numbers (detectron2 prints and logs every bbox value); the
        # record takes them as metrics_se. detectron2's COCOEvaluator (build_evaluator) gives none.
        return OrderedDict(bbox={"AP": res["AP"], "AP50": res["AP50"], "AP75": res["AP75"],
                                 **se_result_keys(res.get("se"))})


def build_evaluator(cfg: Any, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
    """Our VOC evaluator for evaluator_type 'pascal_voc', detectron2's COCOEvaluator for 'coco'."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if kind == "pascal_voc":
        return VOCEvaluator(dataset_name, output_dir=output_folder)
    if kind == "coco":
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder)
    raise UserError(f"dataset {dataset_name} has evaluator_type {kind!r}; only 'pascal_voc' and 'coco' "
                    "datasets can be evaluated (check DATASETS.TEST)")
