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
one. See tv_modeling.py for the known differences to detectron2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import statistics
import sys
import time
from bisect import bisect_right
from collections import defaultdict, deque
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from detection.config import resolve_config_path
from detection.datasets import REGISTRY, get_dataset_dicts, register_datasets
from detection.engines import common
from detection.engines.common import detection_record, report_record
from detection.engines.torchvision.config import build_cfg
from detection.engines.torchvision.data import (
    TestMapper,
    evaluate_predictions,
    load_train_dicts,
    postprocess,
    shard,
    train_loader,
)
from detection.engines.torchvision.modeling import (
    BN_TYPES,
    NORM_TYPES,
    FasterRCNN,
    NaiveSyncBatchNorm2d,
    backbone_targets,
    build_model,
)
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from rimifm.io import DETECTION_CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from rimifm.io import atomic_torch_save, atomic_write_text, load_checkpoint
from rimifm.resnet_weights import d2_to_torchvision, load_d2_pkl
from rimifm.seeding import STREAM_DETECTION, step_seed

ENGINE = "torchvision"
LOG_PERIOD = 20  # detectron2's PeriodicWriter period
logger = logging.getLogger("detection")


# ----------------------------------------------------------------------------- processes


def _setup_logging(cfg: Any, main: bool) -> None:
    logger.setLevel(logging.INFO if main else logging.WARNING)
    if not any(getattr(h, "_tv_engine", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%m/%d %H:%M:%S"))
        handler._tv_engine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


# ----------------------------------------------------------------------------- weights


def load_backbone_pkl(model: FasterRCNN, path: str) -> int:
    """Put a converted ResNet (.pkl, detectron2 names) into the model; returns the number of tensors loaded.

    Every backbone tensor of the model must be filled with a tensor of the same shape (UserError
    otherwise, naming what is missing or mismatched); tensors without a place are reported.
    """
    source = d2_to_torchvision(load_d2_pkl(path)["model"])
    targets = backbone_targets(model)
    state = model.state_dict()
    loaded, unplaced, mismatched = {}, [], []
    for name, tensor in source.items():
        target = targets.get(name)
        if target is None:
            unplaced.append(name)
        elif tuple(state[target].shape) != tuple(tensor.shape):
            mismatched.append(f"{name} {tuple(tensor.shape)} vs {tuple(state[target].shape)}")
        else:
            loaded[target] = tensor.to(state[target].dtype)
    missing = sorted(set(targets.values()) - set(loaded))
    is_norm = lambda n: n.startswith("bn1.") or ".bn" in n or ".downsample.1." in n  # noqa: E731
    ignorable = [n for n in unplaced if model.resnet_norm == "" and is_norm(n)]
    extra = [n for n in unplaced if n not in ignorable]
    if mismatched or missing or extra:
        parts = []
        if extra:
            parts.append(f"{len(extra)} tensor(s) have no place in it: {', '.join(extra[:5])}"
                         + (" ..." if len(extra) > 5 else ""))
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {', '.join(mismatched[:5])}")
        if missing:
            parts.append(f"{len(missing)} backbone tensor(s) not in the file: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
        raise UserError(f"MODEL.WEIGHTS {path} does not fit the ResNet-{model.depth} of this config: "
                        + "; ".join(parts) + " (check MODEL.RESNETS.DEPTH and the converted checkpoint)")
    with torch.no_grad():
        for target, tensor in loaded.items():
            state[target].copy_(tensor)
    logger.info("loaded %d/%d backbone tensors from %s", len(loaded), len(targets), path)
    if ignorable:
        logger.warning("%d norm tensor(s) of %s are not used: MODEL.RESNETS.NORM is ''", len(ignorable), path)
    return len(loaded)


def _read_checkpoint(path: str) -> dict[str, Any]:
    ckpt = load_checkpoint(path, unsafe_flag=None)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of the torchvision engine (detectron2-engine checkpoints "
                        "and other files cannot be loaded here; a converted backbone must be a .pkl)")
    return ckpt


def load_model_checkpoint(model: nn.Module, path: str, strict: bool) -> dict[str, Any]:
    """Load our own full-model checkpoint (.pth); strict: every tensor must fit (eval-only and resume)."""
    ckpt = _read_checkpoint(path)
    state = model.state_dict()
    given = ckpt["model"]
    bad = sorted(k for k in given if k in state and tuple(given[k].shape) != tuple(state[k].shape))
    missing = sorted(set(state) - set(given))
    extra = sorted(set(given) - set(state))
    if strict and (bad or missing or extra):
        raise UserError(f"checkpoint {path} does not fit the model of this config ({len(missing)} missing, "
                        f"{len(extra)} unexpected, {len(bad)} of another shape, e.g. "
                        f"{(missing + extra + bad)[:3]}); use the config it was trained with")
    model.load_state_dict({k: v for k, v in given.items() if k in state and k not in bad}, strict=False)
    if bad or missing:
        logger.warning("%s: %d tensors skipped (shape), %d left at their initial values", path, len(bad),
                       len(missing))
    return ckpt


# ----------------------------------------------------------------------------- solver


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.SGD:
    """SGD with detectron2's parameter groups: WEIGHT_DECAY_NORM on norms, BIAS_LR_FACTOR / WEIGHT_DECAY_BIAS on biases."""
    s = cfg.SOLVER
    bias_override: dict[str, float] = {}
    if s.BIAS_LR_FACTOR != 1.0:
        bias_override["lr"] = s.BASE_LR * s.BIAS_LR_FACTOR
    if s.WEIGHT_DECAY_BIAS is not None:
        bias_override["weight_decay"] = s.WEIGHT_DECAY_BIAS
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            hp = {"lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY}
            if isinstance(module, NORM_TYPES):
                hp["weight_decay"] = s.WEIGHT_DECAY_NORM
            if pname == "bias":
                hp.update(bias_override)
            groups[(hp["lr"], hp["weight_decay"])].append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd, "base_lr": lr} for (lr, wd), ps in groups.items()]
    return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


def lr_factor(cfg: Any, it: int) -> float:
    """detectron2's WarmupMultiStepLR factor at iteration `it` (0-based)."""
    s = cfg.SOLVER
    steps = [x for x in s.STEPS if x <= s.MAX_ITER]
    factor = s.GAMMA ** bisect_right(steps, it)
    if it < s.WARMUP_ITERS:
        if s.WARMUP_METHOD == "constant":
            warm = s.WARMUP_FACTOR
        else:
            alpha = it / s.WARMUP_ITERS
            warm = s.WARMUP_FACTOR * (1 - alpha) + alpha
        factor *= warm
    return factor


def _set_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
    return opt.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(cfg: Any, model: nn.Module, opt: torch.optim.Optimizer | None, iteration: int,
                    name: str) -> Path:
    """Atomic `name` in OUTPUT_DIR, then OUTPUT_DIR/last_checkpoint naming it (as detectron2 does)."""
    out = Path(cfg.OUTPUT_DIR)
    path = out / name
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                       "optimizer": opt.state_dict() if opt is not None else None, "iteration": iteration}, path)
    atomic_write_text(out / "last_checkpoint", name)
    return path


def _last_checkpoint(cfg: Any) -> str | None:
    marker = Path(cfg.OUTPUT_DIR) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(cfg.OUTPUT_DIR) / marker.read_text().strip()
    if not path.is_file():
        raise UserError(f"{marker} names {path.name}, which does not exist; delete {marker} to start over")
    return str(path)


# ----------------------------------------------------------------------------- metrics


class EventLog:
    """OUTPUT_DIR/metrics.json (one JSON per line, rows after a resume point dropped) and TensorBoard."""

    def __init__(self, cfg: Any, start_iter: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(cfg.OUTPUT_DIR) / "metrics.json"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("iteration", 0) < start_iter:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(cfg.OUTPUT_DIR)), purge_step=start_iter or None)
        except ImportError:
            logger.warning("tensorboard is not installed; TensorBoard logging is off")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, row["iteration"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- evaluation and precise BN


def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _first(batch: list[Any]) -> Any:
    return batch[0]


@torch.no_grad()
def inference(cfg: Any, model: nn.Module, name: str, env: Distributed) -> list[dict[str, Any]]:
    """Predictions of this rank's shard of a test split (all ranks' in order on rank 0)."""
    from detection.evaluation.predictions import make_prediction

    dicts = get_dataset_dicts(name)
    part = shard(len(dicts), env.rank, env.world)
    data = torch.utils.data.Subset(TestMapper(dicts, cfg), list(part))
    workers = cfg.DATALOADER.NUM_WORKERS
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=workers, collate_fn=_first)
    was_training = model.training
    model.eval()
    preds = []
    for img, rec in loader:
        with _autocast(env.device):
            det = model([img.to(env.device)])[0]
        boxes, scores, labels = postprocess(det, tuple(img.shape[-2:]), (rec["height"], rec["width"]))
        preds.append(make_prediction(rec["image_id"], boxes, scores, labels))
    model.train(was_training)
    if env.world > 1:
        gathered: list[Any] = [None] * env.world
        dist.all_gather_object(gathered, preds)
        preds = [p for rank in gathered for p in rank]
    return preds


def evaluate(cfg: Any, model: nn.Module, env: Distributed) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {"bbox": {AP, AP50, AP75, ...}}} of every DATASETS.TEST split (on rank 0; {} elsewhere)."""
    results = {}
    for name in cfg.DATASETS.TEST:
        preds = inference(cfg, model, name, env)
        if env.main:
            results[name] = {"bbox": evaluate_predictions(cfg, name, preds)}
    return results


@torch.no_grad()
def precise_bn(cfg: Any, model: nn.Module, dicts: list[dict[str, Any]], seed: int, env: Distributed, at_iter: int) -> None:
    """Replace BN running statistics by their true average over TEST.PRECISE_BN.NUM_ITER training batches."""
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.training and m.track_running_stats]
    if not bns or cfg.TEST.PRECISE_BN.NUM_ITER <= 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    loader = train_loader(dicts, cfg, seed + 1 + at_iter, env.rank, env.world, stream=1, workers=0)
    for i in range(cfg.TEST.PRECISE_BN.NUM_ITER):
        torch.manual_seed(step_seed(seed, at_iter * 1000 + i, env.rank, STREAM_DETECTION) + 1)
        batch = next(loader)
        with _autocast(env.device):
            model([b[0].to(env.device) for b in batch],
                  [{k: v.to(env.device) for k, v in b[1].items()} for b in batch])
    for m, mom in zip(bns, momenta):
        m.momentum = mom


# ----------------------------------------------------------------------------- training


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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _ddp(model: nn.Module, env: Distributed) -> nn.Module:
    if env.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                                               broadcast_buffers=False)


def _swap_sync_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            new = NaiveSyncBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.weight.device))
        else:
            _swap_sync_bn(child)


def train(cfg: Any, args: argparse.Namespace, env: Distributed, seed: int) -> tuple[Any, int, float | None, int]:
    """Train (resuming when asked) and evaluate at the end.

    Returns (results, iterations, seconds per iteration, iteration this run started at).
    """
    model = build_model(cfg).to(env.device)
    if env.world > 1 and env.device.type == "cpu":
        # torch's SyncBatchNorm trains only on GPUs: our all-reduce BN instead, swapped in before the
        # optimizer is built so that it holds the new norm parameters
        _swap_sync_bn(model)
    opt = build_optimizer(cfg, model)
    start_iter = 0
    last = _last_checkpoint(cfg) if args.resume else None
    if last:
        ckpt = load_model_checkpoint(model, last, strict=True)
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        start_iter = int(ckpt["iteration"]) + 1
        logger.info("resuming from %s at iteration %d", last, start_iter)
    else:
        _load_initial(cfg, model)
    max_iter = cfg.SOLVER.MAX_ITER
    ddp_model = _ddp(model, env)
    dicts = load_train_dicts(cfg)
    log = EventLog(cfg, start_iter, env.main)
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
            lr = _set_lr(opt, lr_factor(cfg, it))
            images = [b[0].to(env.device, non_blocking=True) for b in batch]
            targets = [{k: v.to(env.device) for k, v in b[1].items()} for b in batch]
            with _autocast(env.device):
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


def _load_initial(cfg: Any, model: FasterRCNN) -> None:
    """MODEL.WEIGHTS: '' = random init, .pkl = converted backbone, otherwise our own full-model checkpoint."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        logger.info("MODEL.WEIGHTS is empty: training from random initialisation")
    elif weights.endswith(".pkl"):
        load_backbone_pkl(model, weights)
    else:
        load_model_checkpoint(model, weights, strict=False)


def _eval_only(cfg: Any, args: argparse.Namespace, env: Distributed) -> tuple[Any, int]:
    model = build_model(cfg).to(env.device)
    path = (_last_checkpoint(cfg) if args.resume else None) or cfg.MODEL.WEIGHTS
    if path.endswith(".pkl"):
        load_backbone_pkl(model, path)
        iterations = 0
    else:
        ckpt = load_model_checkpoint(model, path, strict=True)
        iterations = int(ckpt.get("iteration", -1)) + 1
    return evaluate(cfg, model, env), iterations


# ----------------------------------------------------------------------------- entry points


def _worker(args: argparse.Namespace) -> None:
    """Body of one process: train (evaluating at the end) or evaluate only; rank 0 writes the record."""
    t0 = time.perf_counter()
    cfg = build_cfg(args.config, args.opts)
    env = Distributed(str(cfg.MODEL.DEVICE), key="MODEL.DEVICE")
    _setup_logging(cfg, env.main)
    register_datasets(synthetic=cfg.RIMIFM.SYNTHETIC_ROOT or None, detectron2=False)
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
            results, iterations = _eval_only(cfg, args, env)
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
    register_datasets(synthetic=cfg.RIMIFM.SYNTHETIC_ROOT or None, detectron2=False)
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


__all__ = ["ENGINE", "build_cfg", "build_optimizer", "evaluate", "load_backbone_pkl", "lr_factor", "run", "train"]
