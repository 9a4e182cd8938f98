"""The pretraining loop: one process or torchrun/DDP, exact resume, checkpoints, then record.json.

The command around it (python tools/pretrain.py --config ... [KEY VALUE ...]) is pretrain/training/cli.py.
"""

from __future__ import annotations

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

from pretrain.config import config_hash
from pretrain.data.batch_views import BatchViewDataset
from pretrain.data.datasets import EpochSampler, TwoViewDataset, build_splits
from pretrain.data.device_views import DeviceViewDataset
from pretrain.data.views import byol_view_specs
from pretrain.method.siamese import build_method
from pretrain.method.supervised import Supervised
from pretrain.optim import build_optimizer, set_lr, warmup_cosine
from pretrain.training.checkpoint import Progress, checkpoint_state, restore
from pretrain.training.monitoring import knn_monitor, progress_bar
from pretrain.training.online_evals import OnlineEvaluations
from pretrain.training.record import pretrain_record
from pretrain.training.setup import (
    StopRequested,
    cpu_bf16_hazards,
    default_output_dir,
    install_signal_handlers,
    resolve_precision,
)
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from rimifm.events import JsonLinesLog
from rimifm.io import atomic_torch_save, atomic_write_text, clean_stale_tmp, load_checkpoint
from rimifm.records import code_version, write_record
from rimifm.seeding import STREAM_IFM, STREAM_RIM, step_seed

#: DATA.VIEWS -> the dataset that makes the two views (see pretrain/config.py)
VIEW_DATASETS = {"cpu": TwoViewDataset, "device": DeviceViewDataset, "batch": BatchViewDataset}


class PretrainRun(OnlineEvaluations):
    """One pretraining run, set up from its config; `run()` trains to the end (or resumes) and returns the record.

    The steps, in order: __init__ (data, model, optimizer, schedules), resume(), then per epoch
    train_epoch() and end_epoch() (kNN, log line, checkpoints), and finally finish() (record.json).
    """

    CHANNELS_LAST_DEVICES = ("cuda",)  # where TRAIN.CHANNELS_LAST applies; tests add "cpu" to run that path

    def __init__(self, cfg, config_name: str, env: Distributed):
        self.cfg, self.env, self.device = cfg, env, env.device
        self.precision = resolve_precision(cfg, env.device)
        self.channels_last = cfg.TRAIN.CHANNELS_LAST and (
            env.device.type in self.CHANNELS_LAST_DEVICES or (env.device.type == "cpu" and cfg.TRAIN.CHANNELS_LAST_CPU))
        self.out_dir = Path(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else default_output_dir(cfg, config_name)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pth"
        self.per_rank = self._per_rank_batch()
        self.global_batch = self.per_rank * env.world

        torch.manual_seed(cfg.SEED)
        np.random.seed(cfg.SEED % 2**32)
        self.splits = build_splits(cfg)
        self.num_classes = self._online_linear_classes()
        views = VIEW_DATASETS[cfg.DATA.VIEWS]  # where the views are made (loader workers or the training device)
        self.dataset = views(self.splits.train, byol_view_specs(cfg), cfg.DATA.MEAN, cfg.DATA.STD, cfg.SEED,
                             with_labels=True)
        self.sampler = EpochSampler(len(self.dataset), self.per_rank, env.rank, env.world, cfg.SEED)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.total_steps = cfg.TRAIN.EPOCHS * self.steps_per_epoch
        self.max_steps = min(self.total_steps, cfg.TRAIN.MAX_STEPS) if cfg.TRAIN.MAX_STEPS else self.total_steps
        self.time_budget = float(cfg.TRAIN.TIME_BUDGET_S)
        self.budget_time = 0.0  # the training time TIME_BUDGET_S counts: the slowest process's, after each step
        self.monitor = knn_monitor(self.splits, cfg) if env.main else None

        self.model = self._build_model()  # the module itself; self.trained wraps it in DDP when needed
        if self.precision == "bf16" and self.device.type == "cpu" and env.main and \
                (hazards := cpu_bf16_hazards(self.model.backbone, cfg.DATA.IMAGE_SIZE)):
            print(f"warning: bf16 on a CPU: {', '.join(hazards)} sees a 1x1 map at DATA.IMAGE_SIZE "
                  f"{cfg.DATA.IMAGE_SIZE}, where oneDNN's bf16 weight gradient can be wrong (NaN in some steps); "
                  "use fp32, larger images or MODEL.CIFAR_STEM true (docs/pretraining.md)", flush=True)
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

    def _supervised_classes(self) -> int:
        """Classes of the labelled training images METHOD supervised learns."""
        labels = getattr(self.splits.train, "labels", None)
        if labels is None or max(labels, default=-1) < 0:
            raise UserError(f"METHOD supervised needs labelled training images; DATA.DATASET {self.cfg.DATA.DATASET} "
                            f"at {self.cfg.DATA.ROOT} has none (use cifar10/cifar100/idx or a labelled imagefolder)")
        return int(max(labels)) + 1

    def _build_model(self) -> torch.nn.Module:
        cfg, device = self.cfg, self.device
        model = Supervised.from_config(cfg, self._supervised_classes()) if cfg.METHOD == "supervised" \
            else build_method(cfg)
        if self.num_classes:
            model.attach_classifier(self.num_classes, cfg.ONLINE_LINEAR.VIEWS)
        if cfg.MODEL.SYNC_BN and self.env.world > 1:
            if device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.env.main:
                print("warning: MODEL.SYNC_BN needs GPUs (PyTorch's SyncBatchNorm is CUDA-only); "
                      "each CPU process keeps its own BatchNorm statistics", file=sys.stderr)
        model.to(device)
        if self.channels_last:
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
        ckpt = restore(self, load_checkpoint(path, unsafe_flag=None), path)
        if self.env.main:
            if ckpt.get("config_hash") != config_hash(self.cfg):
                print(f"note: resuming {path} with a config that differs from the one it was saved with",
                      file=sys.stderr)
            print(f"resumed from {path} at step {self.progress.step} "
                  f"(epoch {self.progress.step // self.steps_per_epoch})")

    def save(self, path: Path) -> None:
        """Checkpoint everything an exact resume needs (main process only, atomically)."""
        if self.env.main:
            atomic_torch_save(checkpoint_state(self), path)

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
        p.history.setdefault("train_time_s", 0.0)  # data loading + compute, summed over resumes
        p.history.setdefault("train_images", 0)
        self.budget_time = p.history["train_time_s"]
        if p.step == 0:
            self.knn(epoch=0, key="knn_top1_init")
        env.barrier()

        previous_handlers = install_signal_handlers()
        try:
            while p.step < self.max_steps and not self.time_is_up():
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
        if p.step % self.steps_per_epoch:  # stopped by MAX_STEPS or TIME_BUDGET_S inside an epoch
            self.precise_bn()
            self.knn(p.step // self.steps_per_epoch)  # the curve ends where training ended
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
                            num_workers=cfg.DATA.NUM_WORKERS, pin_memory=device.type == "cuda", drop_last=True,
                            collate_fn=getattr(self.dataset, "collate_fn", None))  # batch views: collated already
        bar = progress_bar(env.main and cfg.TRAIN.PROGRESS, (self.steps_per_epoch - start_in_epoch) * self.global_batch,
                           epoch, cfg.TRAIN.EPOCHS)
        window_t = t_prev = time.perf_counter()
        window_imgs = 0
        for v1, v2, labels in loader:
            out, lr, momentum = self.step(v1, v2, epoch, labels)
            t_now = time.perf_counter()
            p.history["train_time_s"] += t_now - t_prev
            p.history["train_images"] += self.global_batch
            if self.time_budget:  # one clock for every process, so that all stop at the same step with the same LR
                self.budget_time = env.max(p.history["train_time_s"])
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
            period = cfg.TRAIN.KNN_PERIOD_STEPS
            if period and p.step % period == 0 and p.step % self.steps_per_epoch:  # epoch ends: end_epoch's kNN
                self.knn(epoch)
                t_prev = time.perf_counter()  # evaluation time is not training time
            if p.step >= self.max_steps or self.time_is_up():
                break
        if bar is not None:
            bar.close()

    def step(self, v1: torch.Tensor, v2: torch.Tensor, epoch: int, labels: torch.Tensor | None = None
             ) -> tuple[dict, float, float | None]:
        """One optimizer step on a batch of view pairs: (model outputs, LR, EMA momentum or None)."""
        cfg, env, p, device = self.cfg, self.env, self.progress, self.device
        v1, v2 = self.dataset.to_device(v1, device), self.dataset.to_device(v2, device)  # + colour ops if device
        if self.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        lr = set_lr(self.optimizer, self.base_lr, self.schedule(self.progress_fraction()))
        with self.amp:
            out = self.trained(v1, v2, rim_seed=step_seed(cfg.SEED, p.step, env.rank, STREAM_RIM),
                               ifm_seed=step_seed(cfg.SEED, p.step, env.rank, STREAM_IFM),
                               ifm_active=epoch >= cfg.IFM.START_EPOCH,
                               labels=labels if self.num_classes or cfg.METHOD == "supervised" else None)
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
        momentum = self.model.after_step(self.fraction_done(p.step + 1))
        p.step += 1
        p.images_seen += self.global_batch
        return out, lr, momentum

    def progress_fraction(self) -> float:
        """Training progress in [0, 1) for the LR schedule: per step, or per epoch (OPTIM.SCHEDULE_INTERVAL)."""
        step = self.progress.step
        if self.cfg.OPTIM.SCHEDULE_INTERVAL == "epoch":
            step -= step % self.steps_per_epoch
        return self.fraction_done(step)

    def fraction_done(self, step: int) -> float:
        """How far training is after `step` steps: step / total, or with TRAIN.TIME_BUDGET_S the share of the
        budget's training time spent, when that is further (the schedules then follow time)."""
        done = step / self.total_steps
        if self.time_budget:
            done = max(done, min(1.0, self.budget_time / self.time_budget))
        return done

    def time_is_up(self) -> bool:
        """TRAIN.TIME_BUDGET_S of training time (data + compute, evaluations excluded) is spent."""
        return bool(self.time_budget) and self.budget_time >= self.time_budget

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

    def end_epoch(self, epoch: int) -> None:
        """After a whole epoch: kNN when due, one line on the console, the numbered and the last checkpoint."""
        cfg, history = self.cfg, self.progress.history
        period, epochs = cfg.TRAIN.KNN_PERIOD, cfg.TRAIN.EPOCHS
        knn_due = bool(period) and (epoch % period == 0 or epoch == epochs)
        if self.progress.step >= self.max_steps or self.time_is_up():
            self.precise_bn()  # training ends here: the statistics of the saved backbone come first
        if knn_due or (cfg.TRAIN.KNN_PERIOD_STEPS and self.progress.step % cfg.TRAIN.KNN_PERIOD_STEPS == 0):
            self.knn(epoch)
        if knn_due:
            self.online_linear(epoch)
        if self.env.main:
            msg = f"epoch {epoch}/{epochs}"
            if "loss" in history:
                msg += f": loss {history['loss']:.4f}"
            if "knn_top1" in history and knn_due:
                msg += f", kNN top-1 {history['knn_top1']:.2f}%"
            print(msg, flush=True)
        if epoch % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or epoch == epochs:
            self.save(self.ckpt_dir / f"epoch_{epoch:04d}.pth")
        self.save(self.last_path)
        self.env.barrier()

    def _finished_at(self, steps: int) -> str | None:
        """The date of the record already here when it is of the same steps (a finished run run again keeps it);
        None lets write_record date the record now."""
        try:
            old = json.loads((self.out_dir / "record.json").read_text())
        except (OSError, ValueError):
            return None
        return old.get("finished_at") if isinstance(old, dict) and old.get("steps") == steps else None

    def finish(self) -> dict:
        """Write record.json (main process) and return the record."""
        p = self.progress
        if self.num_classes and p.history.get("online_linear", {}).get("step") != p.step:
            self.online_linear(p.step // self.steps_per_epoch)  # stopped by MAX_STEPS inside an epoch
        record = pretrain_record(self.cfg, out_dir=self.out_dir, checkpoint=self.last_path, steps=p.step,
                                 images=len(self.dataset), world_size=self.env.world, device=self.device,
                                 precision=self.precision, history=p.history, wall_time_s=self.wall_time(),
                                 code_version=self.code_version,
                                 online_knn=self.monitor.protocol() if self.monitor is not None else None)
        if self.env.main:
            h = p.history
            if self.monitor is not None and {"knn_top1", "knn_top1_init", "knn_top1_pixels"} <= set(h):
                print(f"kNN top-1 after {p.step} steps: {h['knn_top1']:.2f}% (initialisation {h['knn_top1_init']:.2f}%, "
                      f"raw pixels {h['knn_top1_pixels']:.2f}%; {self.monitor.describe()})")
            write_record(self.out_dir / "record.json", {**record, "finished_at": self._finished_at(p.step)})
            print(f"checkpoint: {self.last_path}")
            print(f"record: {self.out_dir / 'record.json'}")
        return record
