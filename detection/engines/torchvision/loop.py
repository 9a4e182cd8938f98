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


class Trainer:
    """detectron2's trainer shape: set-up (model, optimizer, resume or initial weights, data, log), then for each
    iteration `run_step` (LR, forward, loss check, backward, step) and `after_step`, whose parts are detectron2's
    hooks in their order: the periodic metrics, precise BN, checkpoints and evaluation."""

    def __init__(self, cfg: Any, args: argparse.Namespace, env: Distributed, seed: int):
        self.cfg, self.env, self.seed = cfg, env, seed
        self.model = build_model(cfg).to(env.device)
        if env.world > 1 and env.device.type == "cpu":
            # torch's SyncBatchNorm trains only on GPUs: our all-reduce BN instead, swapped in before the
            # optimizer is built so that it holds the new norm parameters
            swap_sync_bn(self.model)
        self.opt = build_optimizer(cfg, self.model)
        self.start_iter = self.resume_or_load(bool(args.resume))
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.ddp_model = _ddp(self.model, env)
        self.dicts = load_train_dicts(cfg)
        # metrics.json and TensorBoard events in OUTPUT_DIR, as detectron2 writes them
        self.log = JsonLinesLog(Path(cfg.OUTPUT_DIR) / "metrics.json", "iteration", self.start_iter, env.main,
                                cfg.OUTPUT_DIR)
        self.results: Any = None
        self.times: list[float] = []
        self.window: dict[str, deque] = defaultdict(lambda: deque(maxlen=LOG_PERIOD))

    def resume_or_load(self, resume: bool) -> int:
        """The iteration to start at: after OUTPUT_DIR's last checkpoint (--resume), else 0 from MODEL.WEIGHTS."""
        last = last_checkpoint(self.cfg) if resume else None
        if not last:
            load_initial_weights(self.cfg, self.model)
            return 0
        ckpt = load_model_checkpoint(self.model, last, strict=True)
        if ckpt.get("optimizer"):
            self.opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["iteration"]) + 1
        logger.info("resuming from %s at iteration %d", last, start)
        return start

    def run_step(self, it: int, batch: list) -> tuple[dict[str, float], float]:
        """One iteration's update; returns the (process-averaged) losses and the LR it used."""
        env = self.env
        lr = set_lr(self.opt, lr_factor(self.cfg, it))
        images = [b[0].to(env.device, non_blocking=True) for b in batch]
        targets = [{k: v.to(env.device) for k, v in b[1].items()} for b in batch]
        with autocast(env.device):
            losses = self.ddp_model(images, targets)
        total = sum(losses.values())
        values = _reduce({**losses, "total_loss": total}, env)
        if not math.isfinite(values["total_loss"]):
            raise UserError(f"the loss became {values['total_loss']} at iteration {it} ({values}); lower "
                            "SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS, and check the annotations")
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        return values, lr

    def write_metrics(self, it: int, values: dict[str, float], lr: float, step_time: float, data_time: float) -> None:
        """The PeriodicWriter hook: medians over the last LOG_PERIOD iterations, every LOG_PERIOD and at the end."""
        self.times.append(step_time)
        for k, v in values.items():
            self.window[k].append(v)
        self.window["time"].append(step_time)
        self.window["data_time"].append(data_time)
        if (it + 1) % LOG_PERIOD == 0 or it + 1 == self.max_iter:
            row = {k: statistics.median(v) for k, v in self.window.items()}
            eta = statistics.median(self.window["time"]) * (self.max_iter - it - 1)
            self.log.write({**row, "iteration": it, "lr": lr, "eta_seconds": eta})

    def after_step(self, it: int) -> bool:
        """The hooks after the metrics: precise BN, checkpoints, evaluation; True when it evaluated."""
        cfg, env, final = self.cfg, self.env, it + 1 == self.max_iter
        eval_now = cfg.TEST.EVAL_PERIOD > 0 and (it + 1) % cfg.TEST.EVAL_PERIOD == 0
        if cfg.TEST.PRECISE_BN.ENABLED and (eval_now or final):
            precise_bn(cfg, self.model, self.dicts, self.seed, env, it)
        period = cfg.SOLVER.CHECKPOINT_PERIOD
        if env.main and period > 0 and (it + 1) % period == 0:
            save_checkpoint(cfg, self.model, self.opt, it, f"model_{it:07d}.pth")
        if env.main and final:
            save_checkpoint(cfg, self.model, self.opt, it, "model_final.pth")
        if not (eval_now or final):
            return False
        env.barrier()
        self.results = evaluate(cfg, self.model, env)
        if env.main:
            results = self.results
            self.log.write({"iteration": it, **{f"{ds}/bbox/{k}" if len(results) > 1 else f"bbox/{k}": v
                                                for ds, r in results.items() for k, v in r["bbox"].items()}})
        self.ddp_model.train()
        return True

    def train(self) -> tuple[Any, int, float | None, int]:
        """Train to SOLVER.MAX_ITER (evaluating at the end); returns (results, iterations, seconds per iteration,
        iteration this run started at)."""
        start, max_iter = self.start_iter, self.max_iter
        if start >= max_iter:
            logger.info("already trained to iteration %d (SOLVER.MAX_ITER %d); evaluating", start, max_iter)
            self.results = evaluate(self.cfg, self.model, self.env)
            self.log.close()
            return self.results, max_iter, None, start
        loader = train_loader(self.dicts, self.cfg, self.seed, self.env.rank, self.env.world, start)
        bar = _progress(max_iter, start, self.env.main)
        self.ddp_model.train()
        t_end = time.perf_counter()
        try:
            for it in range(start, max_iter):
                torch.manual_seed(step_seed(self.seed, it, self.env.rank, STREAM_DETECTION))
                batch = next(loader)
                t_data = time.perf_counter()
                values, lr = self.run_step(it, batch)
                now = time.perf_counter()
                step_time, data_time, t_end = now - t_end, t_data - t_end, now
                bar.set_postfix_str(f"loss {values['total_loss']:.3f} lr {lr:.4g}", refresh=False)
                bar.update(1)
                self.write_metrics(it, values, lr, step_time, data_time)
                if self.after_step(it):
                    t_end = time.perf_counter()
        finally:
            bar.close()
            self.log.close()
        steady = self.times[1:] if len(self.times) > 1 else self.times
        return self.results, max_iter, (sum(steady) / len(steady) if steady else None), start


def train(cfg: Any, args: argparse.Namespace, env: Distributed, seed: int) -> tuple[Any, int, float | None, int]:
    """Train (resuming when asked) and evaluate at the end: Trainer(...).train()."""
    return Trainer(cfg, args, env, seed).train()


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
