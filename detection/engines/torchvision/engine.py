"""torchvision engine: the detectron2 protocol (same configs, .pkl backbones, datasets, evaluators) without detectron2.

Selected by `--engine torchvision`, and by `--engine auto` when detectron2 does not import. One
process per GPU: launched by torchrun (WORLD_SIZE in the environment), or spawned here for
`--num-gpus N`; gloo on CPU under torchrun. Training follows detectron2's DefaultTrainer: SGD with
its parameter groups, warmup + multi-step LR per iteration, IMS_PER_BATCH as the global batch,
precise BN and evaluation at TEST.EVAL_PERIOD and at the end, checkpoints every
SOLVER.CHECKPOINT_PERIOD iterations and model_final.pth, `--resume` from OUTPUT_DIR/last_checkpoint.
Outputs: metrics.json (one JSON per line), TensorBoard events, config.yaml, inference/<dataset>/,
record.json (engine "torchvision").

Randomness is keyed by (SEED, iteration, rank): torch's generator is re-seeded every iteration and
augmentations are keyed by stream position, so a resumed run continues exactly as an uninterrupted
one. See modeling.py for the known differences to detectron2.

This module holds the entry (`run`) and the processes; the parts live beside it: solver.py,
checkpoint.py, precise_bn.py, inference.py, loop.py (and the model in modeling.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from detection.config import resolve_config_path
from detection.datasets import REGISTRY, register_from_config
from detection.engines import common
from detection.engines.common import detection_record, report_record
from detection.engines.torchvision.config import build_cfg
from detection.engines.torchvision.loop import eval_only, train
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from rimifm.io import atomic_write_text
from rimifm.records import code_version

ENGINE = "torchvision"
logger = logging.getLogger("detection")


def _setup_logging(cfg: Any, main: bool) -> None:
    """The "detection" logger: INFO on rank 0, WARNING elsewhere, to stderr (one handler however often called)."""
    logger.setLevel(logging.INFO if main else logging.WARNING)
    if not any(getattr(h, "_tv_engine", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%m/%d %H:%M:%S"))
        handler._tv_engine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def _worker(args: argparse.Namespace) -> None:
    """Body of one process: train (evaluating at the end) or evaluate only; rank 0 writes the record."""
    t0 = time.perf_counter()
    code_version()  # the code as it is now, not when the record is written
    cfg = build_cfg(args.config, args.opts)
    env = Distributed(str(cfg.MODEL.DEVICE), key="MODEL.DEVICE")
    _setup_logging(cfg, env.main)
    register_from_config(cfg, detectron2=False)
    seed = cfg.SEED if cfg.SEED >= 0 else None
    if seed is None:
        seed_t = torch.tensor([int.from_bytes(os.urandom(4), "big") % 2**31], device=env.device)  # NCCL: on GPU
        if env.world > 1:
            dist.broadcast(seed_t, 0)
        seed = int(seed_t.item())
    torch.manual_seed(seed + env.rank)
    np.random.seed((seed + env.rank) % 2**32)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    if env.main:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        atomic_write_text(Path(cfg.OUTPUT_DIR) / "config.yaml", cfg.dump())
    try:
        sec_per_iter, start_iter = None, 0
        if args.eval_only:
            results, iterations = eval_only(cfg, args, env)
        else:
            results, iterations, sec_per_iter, start_iter = train(cfg, args, env, seed)
        if env.main:
            record = detection_record(cfg, engine=ENGINE, results=results, iterations=iterations,
                                      wall_time_s=time.perf_counter() - t0, seed=seed, eval_only=args.eval_only,
                                      world_size=env.world, sec_per_iter=sec_per_iter,
                                      extra={"start_iteration": start_iter})
            report_record(cfg, record)
        env.barrier()
    finally:
        env.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, args: argparse.Namespace, dist_url: str) -> None:
    host, port = dist_url[len("tcp://"):].rsplit(":", 1)
    world = args.num_gpus * args.num_machines
    os.environ.update({"MASTER_ADDR": host, "MASTER_PORT": port, "WORLD_SIZE": str(world),
                       "RANK": str(args.machine_rank * args.num_gpus + local_rank), "LOCAL_RANK": str(local_rank)})
    _worker(args)


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Check the config here (clean errors), then train/evaluate in this process or in one per GPU."""
    path = resolve_config_path(args.config)
    cfg = build_cfg(path, args.opts)
    register_from_config(cfg, detectron2=False)
    if args.num_gpus * args.num_machines > 1 and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        raise UserError(f"--num-gpus {args.num_gpus} / --num-machines {args.num_machines}: the torchvision engine "
                        f"spawns one process per GPU, but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}; for several CPU "
                        "processes (gloo) launch it with torchrun: python -m torch.distributed.run --standalone "
                        "--nproc_per_node N detection/train_net.py --engine torchvision ...")
    common.check_runnable(cfg, args, path, REGISTRY, torch.cuda.is_available(), torch.cuda.device_count())
    if cfg.SOLVER.IMS_PER_BATCH % max(int(os.environ.get("WORLD_SIZE", "1")), args.num_gpus * args.num_machines):
        raise UserError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is the global batch and must divide "
                        "evenly among the processes")
    started = time.time()
    world = args.num_gpus * args.num_machines
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or world == 1:
        _worker(args)
    else:
        import torch.multiprocessing as mp

        url = args.dist_url if args.dist_url != "auto" else f"tcp://127.0.0.1:{_free_port()}"
        mp.start_processes(_spawned, args=(args, url), nprocs=args.num_gpus, start_method="spawn")
    record = Path(cfg.OUTPUT_DIR) / "record.json"
    if record.is_file() and record.stat().st_mtime >= started:
        return json.loads(record.read_text())
    return None


__all__ = ["ENGINE", "run"]
