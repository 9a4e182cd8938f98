"""detectron2 engine: MoCo's detection `train_net.py` protocol with our datasets, evaluator and record.

Imported only when detectron2 is installed. One process per GPU through detectron2's `launch`;
each process builds the config, registers the datasets and the Res5ROIHeadsExtraNorm head, then
trains with `DefaultTrainer` (which evaluates at the end) or, with --eval-only, loads
MODEL.WEIGHTS and evaluates. The main process writes OUTPUT_DIR/record.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from detection.config import (
    add_rimifm_config,
    merge_config,
    resolve_config_path,
)
from detection.datasets import register_from_config
from detection.engines import common
from detection.engines.common import detection_record, extract_metrics, report_record
from detection.engines.detectron2 import modeling as d2_modeling
from detection.engines.detectron2.evaluator import build_evaluator
from rimifm.records import code_version

ENGINE = "detectron2"
logger = logging.getLogger("detection")


def build_cfg(config: str | os.PathLike, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's defaults + our RIMIFM node + the config file (with `_BASE_`) + KEY VALUE overrides, frozen.

    OUTPUT_DIR, unless the file or the overrides set it, becomes
    outputs/detection/<config stem>[-<weights stem>].
    """
    cfg = merge_config(add_rimifm_config(get_cfg()), config, opts,
                       "not a detectron2 config key; our own keys live under RIMIFM, e.g. RIMIFM.SYNTHETIC_ROOT")
    cfg.freeze()
    return cfg


def check_runnable(cfg: CfgNode, args: argparse.Namespace, config_path: Path) -> None:
    """Stop early, with one clear message, on what would otherwise fail deep inside detectron2."""
    common.check_runnable(cfg, args, config_path, DatasetCatalog.list(), torch.cuda.is_available(),
                          torch.cuda.device_count())


class Trainer(DefaultTrainer):
    """DefaultTrainer whose evaluators are ours (VOC) or detectron2's COCOEvaluator (COCO)."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> Any:
        return build_evaluator(cfg, dataset_name, output_folder)


def _setup_process(args: argparse.Namespace) -> tuple[CfgNode, int]:
    """Config, logging, seeding and registrations of one process; returns (cfg, seed used)."""
    cfg = build_cfg(args.config, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detection")
    if cfg.SEED >= 0:
        seed = cfg.SEED  # default_setup seeded with SEED + rank
    else:  # draw it ourselves so that the record can name it
        seed = int.from_bytes(os.urandom(4), "big") % 2**31
        seed_all_rng(seed + comm.get_rank())
    register_from_config(cfg, detectron2=True)
    d2_modeling.register()
    return cfg, seed


def _sec_per_iter(trainer: DefaultTrainer) -> float | None:
    try:
        return float(trainer.storage.history("time").global_avg())
    except (KeyError, AttributeError, ZeroDivisionError):
        return None


def _worker(args: argparse.Namespace) -> None:
    """Body of one process: train (and evaluate at the end) or evaluate only; rank 0 writes the record."""
    t0 = time.perf_counter()
    code_version()  # the code as it is now, not when the record is written
    cfg, seed = _setup_process(args)
    sec_per_iter = None
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ckpt = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                     resume=args.resume)
        iterations = int(ckpt.get("iteration", -1)) + 1 if isinstance(ckpt, dict) and "iteration" in ckpt else 0
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        iterations = trainer.iter  # equals MAX_ITER once training finished
        results = getattr(trainer, "_last_eval_results", None)
        sec_per_iter = _sec_per_iter(trainer)
    if comm.is_main_process():
        record = detection_record(cfg, engine=ENGINE, results=results, iterations=iterations,
                                  wall_time_s=time.perf_counter() - t0, seed=seed, eval_only=args.eval_only,
                                  world_size=comm.get_world_size(), sec_per_iter=sec_per_iter)
        report_record(cfg, record)
    comm.synchronize()


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Check the config in this process (clean errors), then launch the workers; returns the record."""
    path = resolve_config_path(args.config)
    args.config_file = str(path)  # default_setup logs the file under this name
    cfg = build_cfg(path, args.opts)
    register_from_config(cfg, detectron2=True)
    check_runnable(cfg, args, path)
    started = time.time()
    launch(_worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    record = Path(cfg.OUTPUT_DIR) / "record.json"
    if record.is_file() and record.stat().st_mtime >= started:
        return json.loads(record.read_text())
    return None


__all__ = ["Trainer", "build_cfg", "check_runnable", "extract_metrics", "run"]
