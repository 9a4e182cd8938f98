"""The training loop of the torchvision engine (detectron2's DefaultTrainer: per-iteration LR, periodic log,
checkpoints, precise BN and evaluation; exact resume) and evaluation of a saved model (--eval-only).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from detection.engines.torchvision.amp import autocast
from detection.engines.torchvision.checkpoint import (
    last_checkpoint,
    load_backbone_pkl,
    load_initial_weights,
    load_model_checkpoint,
    save_checkpoint,
)
from detection.engines.torchvision.data import load_train_dicts, train_loader
from detection.engines.torchvision.inference import evaluate
from detection.engines.torchvision.modeling import build_model
from detection.engines.torchvision.norms import swap_sync_bn
from detection.engines.torchvision.precise_bn import precise_bn
from detection.engines.torchvision.solver import build_optimizer, lr_factor, set_lr
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from rimifm.events import JsonLinesLog
from rimifm.seeding import STREAM_DETECTION, step_seed

LOG_PERIOD = 20  # detectron2's PeriodicWriter period
logger = logging.getLogger("detection")


def _reduce(losses: dict[str, torch.Tensor], env: Distributed) -> dict[str, float]:
    names = sorted(losses)
    vec = torch.stack([losses[k].detach().float() for k in names])
    if env.world > 1:
        dist.all_reduce(vec)
        vec /= env.world
    return dict(zip(names, vec.tolist()))


def _progress(total: int, start: int, main: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not main, dynamic_ncols=True, mininterval=1.0,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]")


def _ddp(model: nn.Module, env: Distributed) -> nn.Module:
    if env.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                                               broadcast_buffers=False)


def train(cfg: Any, args: argparse.Namespace, env: Distributed, seed: int) -> tuple[Any, int, float | None, int]:
    """Train (resuming when asked) and evaluate at the end.

    Returns (results, iterations, seconds per iteration, iteration this run started at).
    """
    model = build_model(cfg).to(env.device)
    if env.world > 1 and env.device.type == "cpu":
        # torch's SyncBatchNorm trains only on GPUs: our all-reduce BN instead, swapped in before the
        # optimizer is built so that it holds the new norm parameters
        swap_sync_bn(model)
    opt = build_optimizer(cfg, model)
    start_iter = 0
    last = last_checkpoint(cfg) if args.resume else None
    if last:
        ckpt = load_model_checkpoint(model, last, strict=True)
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        start_iter = int(ckpt["iteration"]) + 1
        logger.info("resuming from %s at iteration %d", last, start_iter)
    else:
        load_initial_weights(cfg, model)
    max_iter = cfg.SOLVER.MAX_ITER
    ddp_model = _ddp(model, env)
    dicts = load_train_dicts(cfg)
    # metrics.json and TensorBoard events in OUTPUT_DIR, as detectron2 writes them
    log = JsonLinesLog(Path(cfg.OUTPUT_DIR) / "metrics.json", "iteration", start_iter, env.main, cfg.OUTPUT_DIR)
    results: Any = None
    times: list[float] = []
    if start_iter >= max_iter:
        logger.info("already trained to iteration %d (SOLVER.MAX_ITER %d); evaluating", start_iter, max_iter)
        results = evaluate(cfg, model, env)
        log.close()
        return results, max_iter, None, start_iter
    loader = train_loader(dicts, cfg, seed, env.rank, env.world, start_iter)
    window: dict[str, deque] = defaultdict(lambda: deque(maxlen=LOG_PERIOD))
    bar = _progress(max_iter, start_iter, env.main)
    ddp_model.train()
    t_end = time.perf_counter()
    try:
        for it in range(start_iter, max_iter):
            torch.manual_seed(step_seed(seed, it, env.rank, STREAM_DETECTION))
            batch = next(loader)
            t_data = time.perf_counter()
            lr = set_lr(opt, lr_factor(cfg, it))
            images = [b[0].to(env.device, non_blocking=True) for b in batch]
            targets = [{k: v.to(env.device) for k, v in b[1].items()} for b in batch]
            with autocast(env.device):
                losses = ddp_model(images, targets)
            total = sum(losses.values())
            values = _reduce({**losses, "total_loss": total}, env)
            if not math.isfinite(values["total_loss"]):
                raise UserError(f"the loss became {values['total_loss']} at iteration {it} ({values}); lower "
                                "SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS, and check the annotations")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            now = time.perf_counter()
            step_time, data_time, t_end = now - t_end, t_data - t_end, now
            times.append(step_time)
            for k, v in values.items():
                window[k].append(v)
            window["time"].append(step_time)
            window["data_time"].append(data_time)
            bar.set_postfix_str(f"loss {values['total_loss']:.3f} lr {lr:.4g}", refresh=False)
            bar.update(1)
            final = it + 1 == max_iter
            if (it + 1) % LOG_PERIOD == 0 or final:
                row = {k: statistics.median(v) for k, v in window.items()}
                eta = statistics.median(window["time"]) * (max_iter - it - 1)
                log.write({**row, "iteration": it, "lr": lr, "eta_seconds": eta})
            eval_now = cfg.TEST.EVAL_PERIOD > 0 and (it + 1) % cfg.TEST.EVAL_PERIOD == 0
            if cfg.TEST.PRECISE_BN.ENABLED and (eval_now or final):
                precise_bn(cfg, model, dicts, seed, env, it)
            period = cfg.SOLVER.CHECKPOINT_PERIOD
            if env.main and period > 0 and (it + 1) % period == 0:
                save_checkpoint(cfg, model, opt, it, f"model_{it:07d}.pth")
            if env.main and final:
                save_checkpoint(cfg, model, opt, it, "model_final.pth")
            if eval_now or final:
                env.barrier()
                results = evaluate(cfg, model, env)
                if env.main:
                    log.write({"iteration": it, **{f"{ds}/bbox/{k}" if len(results) > 1 else f"bbox/{k}": v
                                                   for ds, r in results.items() for k, v in r["bbox"].items()}})
                ddp_model.train()
                t_end = time.perf_counter()
    finally:
        bar.close()
        log.close()
    steady = times[1:] if len(times) > 1 else times
    return results, max_iter, (sum(steady) / len(steady) if steady else None), start_iter


def eval_only(cfg: Any, args: argparse.Namespace, env: Distributed) -> tuple[Any, int]:
    """Evaluate MODEL.WEIGHTS (or, with --resume, the last checkpoint); returns (results, iterations it was trained)."""
    model = build_model(cfg).to(env.device)
    path = (last_checkpoint(cfg) if args.resume else None) or cfg.MODEL.WEIGHTS
    if path.endswith(".pkl"):
        load_backbone_pkl(model, path)
        iterations = 0
    else:
        ckpt = load_model_checkpoint(model, path, strict=True)
        iterations = int(ckpt.get("iteration", -1)) + 1
    return evaluate(cfg, model, env), iterations
