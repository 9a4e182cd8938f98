"""The pretraining loop: one process or torchrun/DDP, exact resume, monitoring, record.json.

Usage: python tools/pretrain.py --config synthetic_byol.yaml [--resume PATH] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pretrain.config import config_hash, config_to_dict, load_config
from pretrain.data.datasets import EpochSampler, EvalDataset, TwoViewDataset, build_splits
from pretrain.data.views import byol_view_specs
from pretrain.evaluation.knn import extract_features, knn_top1
from pretrain.method.siamese import build_method
from pretrain.training.checkpoint import FORMAT, FORMAT_VERSION, check_compatible
from pretrain.training.optim import build_optimizer, set_lr, warmup_cosine
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from rimifm.io import atomic_torch_save, atomic_write_text, clean_stale_tmp, load_checkpoint
from rimifm.records import code_version, peak_memory_mb, write_record
from rimifm.seeding import STREAM_IFM, STREAM_RIM, rng_state, set_rng_state, step_seed


def default_output_dir(cfg, config_name: str) -> Path:
    """outputs/pretrain/<config>[-rim][-ifm]-s<seed>: a restart with the same settings resumes."""
    tags = [Path(config_name).stem if config_name else "default"]
    if cfg.RIM.ENABLED:
        tags.append("rim")
    if cfg.IFM.ENABLED:
        tags.append("ifm")
    return Path("outputs") / "pretrain" / ("-".join(tags) + f"-s{cfg.SEED}")


def resolve_precision(cfg, device: torch.device) -> str:
    p = cfg.TRAIN.PRECISION
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise UserError("TRAIN.PRECISION fp16 needs a GPU; use fp32 or bf16 on a CPU")
    return p


class MetricsLog:
    """metrics.jsonl (append-only, trimmed back to the resume point) and TensorBoard scalars."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                if row.get("step", 0) <= resume_step:
                    kept.append(line)
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step or None)
            except ImportError:
                print("warning: tensorboard is not installed; TensorBoard logging is off", file=sys.stderr)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"pretrain/{key}", value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class StopRequested(Exception):
    """SIGTERM/SIGINT: save where we are and exit; a restart resumes from there."""


def _install_signal_handlers():
    def handler(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, handler)
    return previous


def online_knn(model, splits, cfg, device) -> float | None:
    """kNN top-1 of the online backbone on the labelled validation split, if the data has one."""
    if splits.knn_train is None or splits.knn_val is None:
        return None
    d = cfg.DATA
    bs = max(64, d.BATCH_SIZE)
    train = EvalDataset(splits.knn_train, d.IMAGE_SIZE, d.MEAN, d.STD)
    val = EvalDataset(splits.knn_val, d.IMAGE_SIZE, d.MEAN, d.STD)
    ftr, ltr = extract_features(model.backbone, train, bs, d.NUM_WORKERS, device)
    fva, lva = extract_features(model.backbone, val, bs, d.NUM_WORKERS, device)
    num_classes = int(max(ltr.max(), lva.max()).item()) + 1
    return knn_top1(ftr, ltr, fva, lva, num_classes, cfg.TRAIN.KNN_K, cfg.TRAIN.KNN_T)


def train(cfg, config_name: str = "", resume: str | None = None) -> dict:
    """Run (or resume) one pretraining run; returns its record."""
    env = Distributed(cfg.TRAIN.DEVICE)
    try:
        return _train(cfg, config_name, resume, env)
    finally:
        env.close()


def _train(cfg, config_name: str, resume: str | None, env: Distributed) -> dict:
    device = env.device
    precision = resolve_precision(cfg, device)
    out_dir = Path(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else default_output_dir(cfg, config_name)
    ckpt_dir = out_dir / "checkpoints"
    last_path = ckpt_dir / "last.pth"

    if cfg.DATA.BATCH_SIZE % env.world:
        raise UserError(f"DATA.BATCH_SIZE {cfg.DATA.BATCH_SIZE} is not divisible by the {env.world} processes")
    per_rank = cfg.DATA.BATCH_SIZE // env.world
    if cfg.IFM.ENABLED and per_rank < 2:
        raise UserError(f"IFM mixes samples within each process's batch, but the per-process batch is {per_rank}; "
                        "raise DATA.BATCH_SIZE or use fewer processes")

    torch.manual_seed(cfg.SEED)
    np.random.seed(cfg.SEED % 2**32)
    splits = build_splits(cfg)
    dataset = TwoViewDataset(splits.train, byol_view_specs(cfg), cfg.DATA.MEAN, cfg.DATA.STD, cfg.SEED)
    sampler = EpochSampler(len(dataset), per_rank, env.rank, env.world, cfg.SEED)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = cfg.TRAIN.EPOCHS * steps_per_epoch

    model = build_method(cfg)
    if cfg.MODEL.SYNC_BN and env.world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif env.main:
            print("warning: MODEL.SYNC_BN needs GPUs (PyTorch's SyncBatchNorm is CUDA-only); "
                  "each CPU process keeps its own BatchNorm statistics", file=sys.stderr)
    model.to(device)
    if device.type == "cuda" and cfg.TRAIN.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and cfg.TRAIN.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)

    ref = cfg.OPTIM.REFERENCE_BATCH_SIZE
    base_lr = cfg.OPTIM.BASE_LR * (cfg.DATA.BATCH_SIZE / ref if ref else 1.0)
    optimizer = build_optimizer(cfg, model, base_lr)
    schedule = warmup_cosine(cfg.OPTIM.WARMUP_EPOCHS / cfg.TRAIN.EPOCHS, cfg.OPTIM.WARMUP_START_FACTOR,
                             cfg.OPTIM.FINAL_LR_FACTOR)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # ---- resume: an explicit path, or the last checkpoint of this output directory ----
    step, elapsed, images_seen, history = 0, 0.0, 0, {}
    resume_path = Path(resume) if resume else (last_path if last_path.is_file() else None)
    if resume and not Path(resume).is_file():
        raise UserError(f"--resume {resume}: no such checkpoint file")
    clean_stale_tmp(ckpt_dir)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, unsafe_flag=None)
        check_compatible(ckpt, resume_path, cfg.METHOD, cfg.MODEL.BACKBONE)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"cannot resume {resume_path}: its weights do not fit this model "
                            f"({str(exc).splitlines()[0]}); check MODEL.* against the checkpoint's config") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, elapsed, images_seen = ckpt["step"], ckpt["elapsed_s"], ckpt["images_seen"]
        history = dict(ckpt.get("history", {}))
        set_rng_state(ckpt["rng"])
        if ckpt.get("config_hash") != config_hash(cfg) and env.main:
            print(f"note: resuming {resume_path} with a config that differs from the one it was saved with",
                  file=sys.stderr)
        if env.main:
            print(f"resumed from {resume_path} at step {step} (epoch {step // steps_per_epoch})")

    if env.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", cfg.dump())
    env.barrier()

    raw_model = model
    if env.world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    log = MetricsLog(out_dir, step, env.main, cfg.TRAIN.TENSORBOARD)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
           if precision in ("bf16", "fp16") else nullcontext())
    global_batch = per_rank * env.world
    max_steps = min(total_steps, cfg.TRAIN.MAX_STEPS) if cfg.TRAIN.MAX_STEPS else total_steps

    def save(path: Path, at_step: int) -> None:
        if not env.main:
            return
        state = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "method": cfg.METHOD, "backbone": cfg.MODEL.BACKBONE, "cifar_stem": cfg.MODEL.CIFAR_STEM,
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "step": at_step, "epoch": at_step // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "elapsed_s": elapsed + (time.perf_counter() - t_start), "images_seen": images_seen,
            "rng": rng_state(), "config": cfg.dump(), "config_hash": config_hash(cfg), "history": history,
            "code_version": version,
        }
        atomic_torch_save(state, path)

    version = code_version()
    t_start = time.perf_counter()
    if step == 0 and cfg.TRAIN.KNN_PERIOD and env.main:
        acc = online_knn(raw_model, splits, cfg, device)
        if acc is not None:
            history["knn_top1_init"] = acc
            log.log({"step": 0, "epoch": 0, "knn_top1": acc})
            print(f"kNN top-1 at initialisation: {acc:.2f}%")
    env.barrier()

    previous_handlers = _install_signal_handlers()
    history.setdefault("train_time_s", 0.0)  # data loading + compute, summed over resumes
    history.setdefault("train_images", 0)
    try:
        while step < max_steps:
            epoch, start_in_epoch = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, start_in_epoch)
            loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=cfg.DATA.NUM_WORKERS,
                                pin_memory=device.type == "cuda", drop_last=True)
            bar = None
            if env.main and cfg.TRAIN.PROGRESS:
                from tqdm import tqdm

                bar = tqdm(total=(steps_per_epoch - start_in_epoch) * global_batch, unit="img", unit_scale=True,
                           desc=f"epoch {epoch + 1}/{cfg.TRAIN.EPOCHS}", dynamic_ncols=True, leave=False, mininterval=1.0)
            window_t, window_imgs = time.perf_counter(), 0
            t_prev = window_t
            for v1, v2 in loader:
                v1 = v1.to(device, non_blocking=True)
                v2 = v2.to(device, non_blocking=True)
                if device.type == "cuda" and cfg.TRAIN.CHANNELS_LAST:
                    v1 = v1.contiguous(memory_format=torch.channels_last)
                    v2 = v2.contiguous(memory_format=torch.channels_last)
                progress = step / total_steps
                lr = set_lr(optimizer, base_lr, schedule(progress))
                with amp:
                    out = model(v1, v2, rim_seed=step_seed(cfg.SEED, step, env.rank, STREAM_RIM),
                                ifm_seed=step_seed(cfg.SEED, step, env.rank, STREAM_IFM),
                                ifm_active=epoch >= cfg.IFM.START_EPOCH)
                loss = out["loss"]
                if not env.all_finite(loss):
                    raise UserError(
                        f"the loss became {loss.item()} at step {step} (epoch {epoch}); training stopped. "
                        f"The last good checkpoint is kept at {last_path if last_path.exists() else '(none yet)'}. "
                        "Lower OPTIM.BASE_LR, add warmup (OPTIM.WARMUP_EPOCHS) or use TRAIN.PRECISION fp32")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                momentum = raw_model.after_step((step + 1) / total_steps)
                step += 1
                images_seen += global_batch
                t_now = time.perf_counter()
                history["train_time_s"] += t_now - t_prev
                history["train_images"] += global_batch
                t_prev = t_now
                window_imgs += global_batch
                if bar is not None:
                    bar.update(global_batch)
                if step % cfg.TRAIN.LOG_PERIOD == 0 or step == max_steps:
                    now = time.perf_counter()
                    row = {"step": step, "epoch": epoch, "lr": lr, "loss": env.mean(loss),
                           "base_loss": env.mean(out["base_loss"]), "z_std": env.mean(out["z_std"]),
                           "images_per_s": window_imgs / max(now - window_t, 1e-9)}
                    if "ifm_loss" in out:
                        row["ifm_loss"] = env.mean(out["ifm_loss"])
                    if momentum is not None:
                        row["momentum"] = momentum
                    history.update({k: row[k] for k in ("loss", "base_loss", "z_std", "ifm_loss") if k in row})
                    log.log(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", z_std=f"{row['z_std']:.3f}", lr=f"{lr:.3g}")
                    window_t, window_imgs = now, 0
                if cfg.TRAIN.CHECKPOINT_PERIOD_STEPS and step % cfg.TRAIN.CHECKPOINT_PERIOD_STEPS == 0:
                    save(last_path, step)
                if step >= max_steps:
                    break
            if bar is not None:
                bar.close()
            epoch_done = step % steps_per_epoch == 0
            if epoch_done:
                ep = step // steps_per_epoch
                if cfg.TRAIN.KNN_PERIOD and (ep % cfg.TRAIN.KNN_PERIOD == 0 or ep == cfg.TRAIN.EPOCHS) and env.main:
                    acc = online_knn(raw_model, splits, cfg, device)
                    if acc is not None:
                        history["knn_top1"] = acc
                        log.log({"step": step, "epoch": ep, "knn_top1": acc})
                if env.main:
                    msg = f"epoch {ep}/{cfg.TRAIN.EPOCHS}"
                    if "loss" in history:
                        msg += f": loss {history['loss']:.4f}"
                    if "knn_top1" in history and cfg.TRAIN.KNN_PERIOD and ep % cfg.TRAIN.KNN_PERIOD == 0:
                        msg += f", kNN top-1 {history['knn_top1']:.2f}%"
                    print(msg, flush=True)
                if ep % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or ep == cfg.TRAIN.EPOCHS:
                    save(ckpt_dir / f"epoch_{ep:04d}.pth", step)
                save(last_path, step)
                env.barrier()
    except StopRequested as stop:
        save(last_path, step)
        log.close()
        raise UserError(f"stopped by {stop}; progress saved at step {step} in {last_path}; "
                        "run the same command again to resume") from None
    finally:
        for s, h in previous_handlers.items():
            signal.signal(s, h)
    if step % steps_per_epoch:  # stopped by MAX_STEPS inside an epoch
        save(last_path, step)
    log.close()

    wall = elapsed + (time.perf_counter() - t_start)
    record = {
        "run_id": f"pretrain-{out_dir.name}-{config_hash(cfg)[:8]}",
        "kind": "pretrain",
        "method": cfg.METHOD,
        "rim": {k.lower(): v for k, v in config_to_dict(cfg)["RIM"].items()},
        "ifm": {k.lower(): v for k, v in config_to_dict(cfg)["IFM"].items()},
        "backbone": cfg.MODEL.BACKBONE,
        "dataset": {"name": cfg.DATA.DATASET, "root": cfg.DATA.ROOT, "images": len(dataset)},
        "epochs": cfg.TRAIN.EPOCHS,
        "steps": step,
        "seed": cfg.SEED,
        "world_size": env.world,
        "device": device.type,
        "precision": precision,
        "metrics": {k: v for k, v in history.items() if k not in ("train_time_s", "train_images")},
        "config": config_to_dict(cfg),
        "config_hash": config_hash(cfg),
        "checkpoint": str(last_path),
        "output_dir": str(out_dir),
        "wall_time_s": round(wall, 3),
        "images_per_s": (round(history["train_images"] / history["train_time_s"], 2)
                         if history["train_time_s"] > 0 else None),
        "peak_memory_mb": peak_memory_mb(device),
        "code_version": version,
    }
    if env.main:
        write_record(out_dir / "record.json", record)
        print(f"checkpoint: {last_path}")
        print(f"record: {out_dir / 'record.json'}")
    return record


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Pretrain a backbone with BYOL or SimSiam, optionally with RIM and IFM.",
                                epilog="Overrides are KEY VALUE pairs, e.g. RIM.ENABLED true IFM.WEIGHT 0.5")
    p.add_argument("--config", default="", help="YAML file, or a name in pretrain/configs/ (default: built-in defaults)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/checkpoints/last.pth)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config or None, args.overrides)
    train(cfg, args.config, args.resume)
    return 0


def cli() -> None:
    """Console entry point."""
    from rimifm.errors import run_cli

    run_cli(main)
