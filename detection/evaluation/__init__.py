"""Detection evaluators: PASCAL VOC AP with detectron2's exact definition, vectorised with numpy, and its
bootstrap standard errors over test images."""

from detection.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_se, voc_ap_with_se
from detection.evaluation.coco_results import coco_results_to_detections, evaluate_coco_results_file
from detection.evaluation.voc import (
    DEFAULT_IOU_THRESHOLDS,
    VOC_CLASSES,
    detectron2_text_boxes,
    read_voc_annotations,
    voc_ap,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_RESAMPLES",
    "VOC_CLASSES",
    "bootstrap_se",
    "coco_results_to_detections",
    "detectron2_text_boxes",
    "evaluate_coco_results_file",
    "read_voc_annotations",
    "voc_ap",
    "voc_ap_with_se",
]
