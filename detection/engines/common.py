"""Pieces every engine shares: input checks, the detection record and metric extraction (no detectron2 needed)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from detection.config import WEIGHTS_PLACEHOLDER, config_hash, config_to_dict, protocol_string
from detection.datasets import REGISTRY
from detection.evaluation.bootstrap import se_from_results
from rimifm.d2_pkl import load_d2_pkl
from rimifm.errors import UserError
from rimifm.records import code_version, peak_memory_mb, write_record
from rimifm.schemas import DetectionRecord, record_to_dict

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


def extract_metrics_se(results: Mapping[str, Any] | None, test_names: Sequence[str]) -> dict[str, Any] | None:
    """The first test dataset's bootstrap standard errors ({AP, AP50, AP75, resamples}), or None when its
    evaluator gave none (only our VOC evaluator computes them; result shapes as in extract_metrics)."""
    if not results or not test_names:
        return None
    res = results if "bbox" in results else results.get(test_names[0])
    return se_from_results(res.get("bbox") if isinstance(res, Mapping) else None)


def detection_record(cfg: Any, *, engine: str, results: Mapping[str, Any] | None, iterations: int,
                     wall_time_s: float, seed: int, eval_only: bool, world_size: int = 1,
                     sec_per_iter: float | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record.json content of one detection run (train or eval-only), built from the detection schema;
    `extra` sets schema fields (start_iteration) or adds keys of its own."""
    test = list(cfg.DATASETS.TEST)
    per_dataset = extract_metrics(results, test)
    chash = config_hash(cfg)
    out_dir = Path(cfg.OUTPUT_DIR)
    named = {f.name for f in dataclasses.fields(DetectionRecord)} - {"extra"}
    extra = dict(extra or {})
    fields: dict[str, Any] = dict(
        run_id=f"detection-{out_dir.name}-{chash[:8]}-s{seed}{'-eval' if eval_only else ''}",
        engine=engine,
        eval_only=eval_only,
        source_checkpoint=cfg.MODEL.WEIGHTS,
        protocol=protocol_string(cfg),
        backbone=f"R{cfg.MODEL.RESNETS.DEPTH}",
        dataset={"train": list(cfg.DATASETS.TRAIN), "test": test},
        metrics=per_dataset.get(test[0], {}) if test else {},
        iterations=int(iterations),
        seed=int(seed),
        world_size=int(world_size),
        device=str(cfg.MODEL.DEVICE),
        wall_time_s=round(float(wall_time_s), 3),
        sec_per_iter=None if sec_per_iter is None else round(float(sec_per_iter), 4),
        peak_memory_mb=peak_memory_mb(str(cfg.MODEL.DEVICE)),
        output_dir=str(out_dir),
        config=config_to_dict(cfg),
        config_hash=chash,
        code_version=code_version(),
        metrics_per_dataset=per_dataset if len(per_dataset) > 1 else None,
        metrics_se=extract_metrics_se(results, test),
    )
    fields.update((k, v) for k, v in extra.items() if k in named)
    record = DetectionRecord(**fields, extra={k: v for k, v in extra.items() if k not in named})
    return record_to_dict(record)


def save_record(cfg: Any, record: Mapping[str, Any]) -> Path:
    """Write record.json into OUTPUT_DIR."""
    return write_record(Path(cfg.OUTPUT_DIR) / "record.json", dict(record))


def report_record(cfg: Any, record: Mapping[str, Any]) -> Path:
    """Write record.json and print the run's summary line and the record's path (both engines alike)."""
    path = save_record(cfg, record)
    m = record["metrics"]
    summary = "  ".join(f"{k} {m[k]:.2f}" for k in METRIC_KEYS if k in m) or "no metrics"
    print(f"{record['protocol']} ({record['engine']}): {summary}")
    print(f"record: {path}")
    return path


def last_checkpoint_exists(cfg: Any) -> bool:
    """True when OUTPUT_DIR/last_checkpoint names a checkpoint to resume from."""
    return (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file()


def check_runnable(cfg: Any, args: argparse.Namespace, config_path: Path, known_datasets: Collection[str],
                   cuda_available: bool, cuda_count: int) -> None:
    """Stop early, with one clear message, on what would otherwise fail deep inside an engine.

    Checks MODEL.WEIGHTS (placeholder, missing file, not a weights pickle), MODEL.DEVICE, the
    process options and that every DATASETS.TRAIN/TEST name is registered and on disk.
    """
    weights = cfg.MODEL.WEIGHTS
    resuming = args.resume and last_checkpoint_exists(cfg)
    if weights == WEIGHTS_PLACEHOLDER and not resuming:
        raise UserError(f"{config_path.name} needs the backbone to fine-tune: add MODEL.WEIGHTS path/to/backbone.pkl "
                        "(make it with `python tools/convert_to_d2.py checkpoint.pth backbone.pkl`), "
                        "or MODEL.WEIGHTS '' to train from random initialisation")
    if not weights and args.eval_only and not resuming:
        raise UserError("--eval-only needs MODEL.WEIGHTS (e.g. OUTPUT_DIR/model_final.pth of a training run)")
    if weights and "://" not in weights and not resuming:
        if not Path(weights).is_file():
            raise UserError(f"MODEL.WEIGHTS file {weights} does not exist")
        if weights.endswith(".pkl"):
            load_d2_pkl(weights)  # UserError when it is not a detectron2 weights pickle
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not cuda_available:
        raise UserError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA GPU is visible; "
                        "add MODEL.DEVICE cpu (slow for the real-data configs)")
    if args.num_gpus * args.num_machines > 1:
        if not str(cfg.MODEL.DEVICE).startswith("cuda"):
            raise UserError(f"--num-gpus {args.num_gpus} / --num-machines {args.num_machines}: detectron2 runs "
                            f"several processes only on GPUs, but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}; "
                            "use --num-gpus 1 on CPU")
        if args.num_gpus > cuda_count:
            raise UserError(f"--num-gpus {args.num_gpus} but this machine shows {cuda_count} GPU(s)")
    if args.num_machines > 1 and args.dist_url == "auto":
        raise UserError("--num-machines > 1 needs --dist-url tcp://<host of machine 0>:<port>")
    known = set(known_datasets)
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in known:
                raise UserError(f"DATASETS.{key} names {name!r}, which is not a registered dataset; ours: "
                                f"{', '.join(sorted(REGISTRY))}")
            if name in REGISTRY:
                REGISTRY[name].check_exists()
