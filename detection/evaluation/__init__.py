"""Detection evaluators: PASCAL VOC AP with detectron2's exact definition, vectorised with numpy."""

from detection.evaluation.voc import (
    DEFAULT_IOU_THRESHOLDS,
    VOC_CLASSES,
    coco_results_to_detections,
    detectron2_text_boxes,
    evaluate_coco_results_file,
    read_voc_annotations,
    voc_ap,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "VOC_CLASSES",
    "coco_results_to_detections",
    "detectron2_text_boxes",
    "evaluate_coco_results_file",
    "read_voc_annotations",
    "voc_ap",
]
