"""Pieces every engine shares: the detection record and metric extraction (no detectron2 needed)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detection.config import config_hash, config_to_dict, protocol_string
from pretrain.records import code_version, peak_memory_mb, write_record

METRIC_KEYS = ("AP", "AP50", "AP75")


def extract_metrics(results: Mapping[str, Any] | None, test_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """{dataset: {AP, AP50, AP75}} from detectron2-style results.

    Accepts {task: {...}} (one test dataset, as DefaultTrainer.test flattens it) or
    {dataset: {task: {...}}}; the "bbox" task is used.
    """
    if not results:
        return {}
    per_dataset = {test_names[0]: results} if "bbox" in results and test_names else results
    out: dict[str, dict[str, float]] = {}
    for name, res in per_dataset.items():
        bbox = res.get("bbox") if isinstance(res, Mapping) else None
        if isinstance(bbox, Mapping):
            out[name] = {k: float(bbox[k]) for k in METRIC_KEYS if k in bbox and bbox[k] is not None}
    return out


def detection_record(cfg: Any, *, engine: str, results: Mapping[str, Any] | None, iterations: int,
                     wall_time_s: float, seed: int, eval_only: bool, world_size: int = 1,
                     sec_per_iter: float | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record.json content of one detection run (train or eval-only)."""
    test = list(cfg.DATASETS.TEST)
    per_dataset = extract_metrics(results, test)
    chash = config_hash(cfg)
    out_dir = Path(cfg.OUTPUT_DIR)
    record = {
        "run_id": f"detection-{out_dir.name}-{chash[:8]}-s{seed}{'-eval' if eval_only else ''}",
        "kind": "detection",
        "engine": engine,
        "eval_only": eval_only,
        "source_checkpoint": cfg.MODEL.WEIGHTS,
        "protocol": protocol_string(cfg),
        "backbone": f"R{cfg.MODEL.RESNETS.DEPTH}",
        "dataset": {"train": list(cfg.DATASETS.TRAIN), "test": test},
        "metrics": per_dataset.get(test[0], {}) if test else {},
        "iterations": int(iterations),
        "seed": int(seed),
        "world_size": int(world_size),
        "device": str(cfg.MODEL.DEVICE),
        "wall_time_s": round(float(wall_time_s), 3),
        "sec_per_iter": None if sec_per_iter is None else round(float(sec_per_iter), 4),
        "peak_memory_mb": peak_memory_mb(str(cfg.MODEL.DEVICE)),
        "output_dir": str(out_dir),
        "config": config_to_dict(cfg),
        "config_hash": chash,
        "code_version": code_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if len(per_dataset) > 1:
        record["metrics_per_dataset"] = per_dataset
    if extra:
        record.update(extra)
    return record


def save_record(cfg: Any, record: Mapping[str, Any]) -> Path:
    """Write record.json into OUTPUT_DIR."""
    return write_record(Path(cfg.OUTPUT_DIR) / "record.json", dict(record))
