"""The pretraining loop: one process or torchrun/DDP, exact resume, checkpoints, then record.json.

Usage: python tools/pretrain.py --config synthetic_byol.yaml [--resume PATH] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pretrain.config import config_hash, load_config
from pretrain.data.datasets import EpochSampler, TwoViewDataset, build_splits
from pretrain.data.device_views import DeviceViewDataset
from pretrain.data.views import byol_view_specs
from pretrain.method.siamese import build_method
from pretrain.training.checkpoint import FORMAT, FORMAT_VERSION, check_compatible
from pretrain.training.monitoring import online_knn, online_linear_accuracy, progress_bar
from pretrain.training.optim import build_optimizer, set_lr, warmup_cosine
from pretrain.training.record import pretrain_record
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from rimifm.events import JsonLinesLog
from rimifm.io import atomic_torch_save, atomic_write_text, clean_stale_tmp, load_checkpoint
from rimifm.records import code_version, write_record
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


class StopRequested(Exception):
    """SIGTERM/SIGINT: save where we are and exit; a restart resumes from there."""


def _install_signal_handlers() -> dict:
    def handler(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, handler)
    return previous


@dataclass
class Progress:
    """What a checkpoint carries forward besides the weights: position, time, images and the metrics so far."""

    step: int = 0
    elapsed_s: float = 0.0  # wall time of earlier sessions of this run (resumes)
    images_seen: int = 0
    history: dict = field(default_factory=dict)


class PretrainRun:
    """One pretraining run, set up from its config; `run()` trains to the end (or resumes) and returns the record.

    The steps, in order: __init__ (data, model, optimizer, schedules), resume(), then per epoch
    train_epoch() and end_epoch() (kNN, log line, checkpoints), and finally finish() (record.json).
    """

    CHANNELS_LAST_DEVICES = ("cuda",)  # where TRAIN.CHANNELS_LAST applies; tests add "cpu" to run that path

    def __init__(self, cfg, config_name: str, env: Distributed):
        self.cfg, self.env, self.device = cfg, env, env.device
        self.precision = resolve_precision(cfg, env.device)
        self.out_dir = Path(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else default_output_dir(cfg, config_name)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pth"
        self.per_rank = self._per_rank_batch()
        self.global_batch = self.per_rank * env.world

        torch.manual_seed(cfg.SEED)
        np.random.seed(cfg.SEED % 2**32)
        self.splits = build_splits(cfg)
        self.num_classes = self._online_linear_classes()
        views = DeviceViewDataset if cfg.DATA.VIEWS == "device" else TwoViewDataset  # where the colour ops run
        self.dataset = views(self.splits.train, byol_view_specs(cfg), cfg.DATA.MEAN, cfg.DATA.STD, cfg.SEED,
                             with_labels=True)
        self.sampler = EpochSampler(len(self.dataset), self.per_rank, env.rank, env.world, cfg.SEED)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.total_steps = cfg.TRAIN.EPOCHS * self.steps_per_epoch
        self.max_steps = min(self.total_steps, cfg.TRAIN.MAX_STEPS) if cfg.TRAIN.MAX_STEPS else self.total_steps

        self.model = self._build_model()  # the module itself; self.trained wraps it in DDP when needed
        ref = cfg.OPTIM.REFERENCE_BATCH_SIZE
        self.base_lr = cfg.OPTIM.BASE_LR * (cfg.DATA.BATCH_SIZE / ref if ref else 1.0)
        # the online classifier: its own base LR (scaled with the batch like BASE_LR), no weight decay
        classifier_group = {"classifier.": {"weight_decay": 0.0, "lr_scale": cfg.ONLINE_LINEAR.LR / cfg.OPTIM.BASE_LR}}
        self.optimizer = build_optimizer(cfg, self.model, self.base_lr, classifier_group)
        self.schedule = warmup_cosine(cfg.OPTIM.WARMUP_EPOCHS / cfg.TRAIN.EPOCHS, cfg.OPTIM.WARMUP_START_FACTOR,
                                      cfg.OPTIM.FINAL_LR_FACTOR)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.amp = (torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
                    if self.precision in ("bf16", "fp16") else nullcontext())
        self.progress = Progress()
        self.code_version = code_version()
        self.session_start = time.perf_counter()
        self.log: JsonLinesLog | None = None
        self.trained: torch.nn.Module = self.model

    # ------------------------------------------------------------------ set-up

    def _per_rank_batch(self) -> int:
        cfg, world = self.cfg, self.env.world
        if cfg.DATA.BATCH_SIZE % world:
            raise UserError(f"DATA.BATCH_SIZE {cfg.DATA.BATCH_SIZE} is not divisible by the {world} processes")
        per_rank = cfg.DATA.BATCH_SIZE // world
        if cfg.IFM.ENABLED and per_rank < 2:
            raise UserError(f"IFM mixes samples within each process's batch, but the per-process batch is "
                            f"{per_rank}; raise DATA.BATCH_SIZE or use fewer processes")
        return per_rank

    def _online_linear_classes(self) -> int:
        """Classes of the labelled pretraining images the online classifier learns (0 when it is off)."""
        if not self.cfg.ONLINE_LINEAR.ENABLED:
            return 0
        labels = getattr(self.splits.train, "labels", None)
        if labels is None or max(labels, default=-1) < 0 or self.splits.knn_val is None:
            raise UserError(f"ONLINE_LINEAR.ENABLED needs labelled pretraining images and a labelled validation "
                            f"split; DATA.DATASET {self.cfg.DATA.DATASET} at {self.cfg.DATA.ROOT} has none "
                            "(use cifar10/cifar100/idx, or a labelled imagefolder with DATA.KNN_VAL)")
        return int(max(labels)) + 1

    def _build_model(self) -> torch.nn.Module:
        cfg, device = self.cfg, self.device
        model = build_method(cfg)
        if self.num_classes:
            model.attach_classifier(self.num_classes)
        if cfg.MODEL.SYNC_BN and self.env.world > 1:
            if device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.env.main:
                print("warning: MODEL.SYNC_BN needs GPUs (PyTorch's SyncBatchNorm is CUDA-only); "
                      "each CPU process keeps its own BatchNorm statistics", file=sys.stderr)
        model.to(device)
        if device.type in self.CHANNELS_LAST_DEVICES and cfg.TRAIN.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda" and cfg.TRAIN.DETERMINISTIC:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True)
        return model

    def resume(self, resume: str | None) -> None:
        """Load an explicit checkpoint, or this output directory's last one, if any."""
        if resume and not Path(resume).is_file():
            raise UserError(f"--resume {resume}: no such checkpoint file")
        path = Path(resume) if resume else (self.last_path if self.last_path.is_file() else None)
        clean_stale_tmp(self.ckpt_dir)
        if path is None:
            return
        cfg = self.cfg
        ckpt = load_checkpoint(path, unsafe_flag=None)
        check_compatible(ckpt, path, cfg.METHOD, cfg.MODEL.BACKBONE)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"cannot resume {path}: its weights do not fit this model "
                            f"({str(exc).splitlines()[0]}); check MODEL.* against the checkpoint's config") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = Progress(ckpt["step"], ckpt["elapsed_s"], ckpt["images_seen"], dict(ckpt.get("history", {})))
        set_rng_state(ckpt["rng"])
        if self.env.main:
            if ckpt.get("config_hash") != config_hash(cfg):
                print(f"note: resuming {path} with a config that differs from the one it was saved with",
                      file=sys.stderr)
            print(f"resumed from {path} at step {self.progress.step} "
                  f"(epoch {self.progress.step // self.steps_per_epoch})")

    def save(self, path: Path) -> None:
        """Checkpoint everything an exact resume needs (main process only, atomically)."""
        if not self.env.main:
            return
        cfg, p = self.cfg, self.progress
        state = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "method": cfg.METHOD, "backbone": cfg.MODEL.BACKBONE, "cifar_stem": cfg.MODEL.CIFAR_STEM,
            "cifar_stem_padding": cfg.MODEL.CIFAR_STEM_PADDING,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": p.step, "epoch": p.step // self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
            "elapsed_s": self.wall_time(), "images_seen": p.images_seen,
            "rng": rng_state(), "config": cfg.dump(), "config_hash": config_hash(cfg), "history": p.history,
            "code_version": self.code_version,
        }
        atomic_torch_save(state, path)

    def wall_time(self) -> float:
        return self.progress.elapsed_s + (time.perf_counter() - self.session_start)

    # ------------------------------------------------------------------ training

    def run(self, resume: str | None) -> dict:
        env, p = self.env, self.progress
        self.resume(resume)
        p = self.progress
        if env.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.yaml", self.cfg.dump())
        env.barrier()
        if env.world > 1:
            ddp_kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, **ddp_kwargs)
        # metrics.jsonl: one line per LOG_PERIOD steps and per kNN evaluation; TensorBoard scalars in tb/
        self.log = JsonLinesLog(self.out_dir / "metrics.jsonl", "step", p.step + 1, env.main,
                                self.out_dir / "tb" if self.cfg.TRAIN.TENSORBOARD else None, "pretrain/", ("epoch",))
        self.session_start = time.perf_counter()
        if p.step == 0:
            self.knn(epoch=0, key="knn_top1_init")
        env.barrier()

        p.history.setdefault("train_time_s", 0.0)  # data loading + compute, summed over resumes
        p.history.setdefault("train_images", 0)
        previous_handlers = _install_signal_handlers()
        try:
            while p.step < self.max_steps:
                self.train_epoch(p.step // self.steps_per_epoch)
                if p.step % self.steps_per_epoch == 0:
                    self.end_epoch(p.step // self.steps_per_epoch)
        except StopRequested as stop:
            self.save(self.last_path)
            self.log.close()
            raise UserError(f"stopped by {stop}; progress saved at step {p.step} in {self.last_path}; "
                            "run the same command again to resume") from None
        finally:
            for s, h in previous_handlers.items():
                signal.signal(s, h)
        if p.step % self.steps_per_epoch:  # stopped by MAX_STEPS inside an epoch
            self.save(self.last_path)
        self.log.close()
        return self.finish()

    def train_epoch(self, epoch: int) -> None:
        """Steps from the current position to the end of `epoch` (or MAX_STEPS)."""
        cfg, env, p, device = self.cfg, self.env, self.progress, self.device
        start_in_epoch = p.step - epoch * self.steps_per_epoch
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_in_epoch)
        loader = DataLoader(self.dataset, batch_size=self.per_rank, sampler=self.sampler,
                            num_workers=cfg.DATA.NUM_WORKERS, pin_memory=device.type == "cuda", drop_last=True)
        bar = progress_bar(env.main and cfg.TRAIN.PROGRESS, (self.steps_per_epoch - start_in_epoch) * self.global_batch,
                           epoch, cfg.TRAIN.EPOCHS)
        window_t = t_prev = time.perf_counter()
        window_imgs = 0
        for v1, v2, labels in loader:
            out, lr, momentum = self.step(v1, v2, epoch, labels)
            t_now = time.perf_counter()
            p.history["train_time_s"] += t_now - t_prev
            p.history["train_images"] += self.global_batch
            t_prev = t_now
            window_imgs += self.global_batch
            if bar is not None:
                bar.update(self.global_batch)
            if p.step % cfg.TRAIN.LOG_PERIOD == 0 or p.step == self.max_steps:
                row = self.log_row(out, epoch, lr, momentum, window_imgs / max(t_now - window_t, 1e-9))
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", z_std=f"{row['z_std']:.3f}", lr=f"{lr:.3g}")
                window_t, window_imgs = t_now, 0
            if cfg.TRAIN.CHECKPOINT_PERIOD_STEPS and p.step % cfg.TRAIN.CHECKPOINT_PERIOD_STEPS == 0:
                self.save(self.last_path)
            if p.step >= self.max_steps:
                break
        if bar is not None:
            bar.close()

    def step(self, v1: torch.Tensor, v2: torch.Tensor, epoch: int, labels: torch.Tensor | None = None
             ) -> tuple[dict, float, float | None]:
        """One optimizer step on a batch of view pairs: (model outputs, LR, EMA momentum or None)."""
        cfg, env, p, device = self.cfg, self.env, self.progress, self.device
        v1, v2 = self.dataset.to_device(v1, device), self.dataset.to_device(v2, device)  # + colour ops if device
        if device.type in self.CHANNELS_LAST_DEVICES and cfg.TRAIN.CHANNELS_LAST:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        lr = set_lr(self.optimizer, self.base_lr, self.schedule(self.progress_fraction()))
        with self.amp:
            out = self.trained(v1, v2, rim_seed=step_seed(cfg.SEED, p.step, env.rank, STREAM_RIM),
                               ifm_seed=step_seed(cfg.SEED, p.step, env.rank, STREAM_IFM),
                               ifm_active=epoch >= cfg.IFM.START_EPOCH,
                               labels=labels if self.num_classes else None)
        loss = out["loss"]
        if not env.all_finite(loss):
            raise UserError(
                f"the loss became {loss.item()} at step {p.step} (epoch {epoch}); training stopped. "
                f"The last good checkpoint is kept at {self.last_path if self.last_path.exists() else '(none yet)'}. "
                "Lower OPTIM.BASE_LR, add warmup (OPTIM.WARMUP_EPOCHS) or use TRAIN.PRECISION fp32")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        momentum = self.model.after_step((p.step + 1) / self.total_steps)
        p.step += 1
        p.images_seen += self.global_batch
        return out, lr, momentum

    def progress_fraction(self) -> float:
        """Training progress in [0, 1) for the LR schedule: per step, or per epoch (OPTIM.SCHEDULE_INTERVAL)."""
        step = self.progress.step
        if self.cfg.OPTIM.SCHEDULE_INTERVAL == "epoch":
            step -= step % self.steps_per_epoch
        return step / self.total_steps

    def log_row(self, out: dict, epoch: int, lr: float, momentum: float | None, images_per_s: float) -> dict:
        """One metrics.jsonl line (losses averaged over processes); the latest values go into the history."""
        env = self.env
        row = {"step": self.progress.step, "epoch": epoch, "lr": lr, "loss": env.mean(out["loss"]),
               "base_loss": env.mean(out["base_loss"]), "z_std": env.mean(out["z_std"]),
               "images_per_s": images_per_s}
        for key in ("ifm_loss", "online_linear_loss"):
            if key in out:
                row[key] = env.mean(out[key])
        if momentum is not None:
            row["momentum"] = momentum
        self.progress.history.update({k: row[k] for k in ("loss", "base_loss", "z_std", "ifm_loss") if k in row})
        self.log.write(row)
        return row

    def knn(self, epoch: int, key: str = "knn_top1") -> float | None:
        """Online kNN top-1 (main process), logged and kept in the history under `key`."""
        if not (self.cfg.TRAIN.KNN_PERIOD and self.env.main):
            return None
        acc = online_knn(self.model, self.splits, self.cfg, self.device)
        if acc is not None:
            self.progress.history[key] = acc
            self.log.write({"step": self.progress.step, "epoch": epoch, "knn_top1": acc})
            if epoch == 0:
                print(f"kNN top-1 at initialisation: {acc:.2f}%")
        return acc

    def end_epoch(self, epoch: int) -> None:
        """After a whole epoch: kNN when due, one line on the console, the numbered and the last checkpoint."""
        cfg, history = self.cfg, self.progress.history
        period, epochs = cfg.TRAIN.KNN_PERIOD, cfg.TRAIN.EPOCHS
        knn_due = bool(period) and (epoch % period == 0 or epoch == epochs)
        if knn_due:
            self.knn(epoch)
            self.online_linear(epoch)
        if self.env.main:
            msg = f"epoch {epoch}/{epochs}"
            if "loss" in history:
                msg += f": loss {history['loss']:.4f}"
            if "knn_top1" in history and period and epoch % period == 0:
                msg += f", kNN top-1 {history['knn_top1']:.2f}%"
            print(msg, flush=True)
        if epoch % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or epoch == epochs:
            self.save(self.ckpt_dir / f"epoch_{epoch:04d}.pth")
        self.save(self.last_path)
        self.env.barrier()

    def online_linear(self, epoch: int) -> dict | None:
        """Top-1/top-5 of the online classifier on the clean validation split (main process), logged."""
        if not (self.num_classes and self.env.main):
            return None
        result = online_linear_accuracy(self.model, self.splits, self.cfg, self.device)
        self.progress.history["online_linear"] = {**result, "step": self.progress.step}
        self.log.write({"step": self.progress.step, "epoch": epoch, "online_linear_top1": result["top1"]})
        return result

    def finish(self) -> dict:
        """Write record.json (main process) and return the record."""
        p = self.progress
        if self.num_classes and p.history.get("online_linear", {}).get("step") != p.step:
            self.online_linear(p.step // self.steps_per_epoch)  # stopped by MAX_STEPS inside an epoch
        record = pretrain_record(self.cfg, out_dir=self.out_dir, checkpoint=self.last_path, steps=p.step,
                                 images=len(self.dataset), world_size=self.env.world, device=self.device,
                                 precision=self.precision, history=p.history, wall_time_s=self.wall_time(),
                                 code_version=self.code_version)
        if self.env.main:
            write_record(self.out_dir / "record.json", record)
            print(f"checkpoint: {self.last_path}")
            print(f"record: {self.out_dir / 'record.json'}")
        return record


def train(cfg, config_name: str = "", resume: str | None = None) -> dict:
    """Run (or resume) one pretraining run; returns its record."""
    env = Distributed(cfg.TRAIN.DEVICE)
    try:
        return PretrainRun(cfg, config_name, env).run(resume)
    finally:
        env.close()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Pretrain a backbone with BYOL or SimSiam, optionally with RIM and IFM.",
                                epilog="Overrides are KEY VALUE pairs, e.g. RIM.ENABLED true IFM.WEIGHT 0.5")
    p.add_argument("--config", default="", help="YAML file, or a name in pretrain/configs/ (default: built-in defaults)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/checkpoints/last.pth)")
    p.add_argument("--print-config", action="store_true",
                   help="print the merged config (defaults, file, overrides) as YAML and exit; reads no data")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs")
    args = p.parse_args(argv)
    if "--print-config" in args.overrides:  # also accepted after the KEY VALUE pairs
        args.overrides = [x for x in args.overrides if x != "--print-config"]
        args.print_config = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config or None, args.overrides)
    if args.print_config:
        print(cfg.dump(), end="")
        return 0
    train(cfg, args.config, args.resume)
    return 0


def cli() -> None:
    """Console entry point."""
    from rimifm.errors import run_cli

    run_cli(main)
