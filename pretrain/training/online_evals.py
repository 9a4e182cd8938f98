"""The evaluations a pretraining run makes while it trains: the online kNN, precise BN, and the online linear
classifier's validation (with clean-image BN statistics for ONLINE_LINEAR.VIEWS clean). A mixin of PretrainRun
(loop.py), which provides cfg, model, splits, device, env, progress, log, monitor and num_classes."""

from __future__ import annotations

import copy

import torch

from pretrain.data.datasets import EvalDataset
from pretrain.evaluation.recipes import recompute_bn
from pretrain.training.monitoring import online_linear_accuracy
from rimifm.precise_bn import local_batch_norm


class OnlineEvaluations:
    """PretrainRun's evaluations during training."""

    def knn(self, epoch: int, key: str = "knn_top1") -> float | None:
        """Online kNN top-1 (main process), logged, kept in the history under `key` and on the learning curve
        (once per step); at initialisation also the raw-pixel anchor (monitoring.KnnMonitor.evaluate)."""
        if self.monitor is None:
            return None
        p = self.progress
        acc, new = self.monitor.evaluate(self.model.backbone, self.device, p.history, key, p.step, epoch,
                                         self.wall_time())
        if new:
            self.log.write({"step": p.step, "epoch": epoch, "knn_top1": acc})
        return acc

    def precise_bn(self) -> None:
        """TRAIN.PRECISE_BN_IMAGES: the backbones' BN statistics re-estimated on clean training images (all processes
        alike: each re-estimates on the same images), recorded in the history."""
        n = self.cfg.TRAIN.PRECISE_BN_IMAGES
        if not n or self.progress.history.get("precise_bn_step") == self.progress.step:
            return
        for backbone in (self.model.backbone, getattr(self.model, "target_backbone", None)):
            if backbone is not None:
                used = self._recompute_bn(backbone, n)
        self.progress.history.update(precise_bn_images=used, precise_bn_step=self.progress.step)
        if self.env.main:
            print(f"BN statistics re-estimated on {used} clean training images (TRAIN.PRECISE_BN_IMAGES)", flush=True)

    def clean_bn_backbone(self) -> torch.nn.Module | None:
        """ONLINE_LINEAR.VIEWS clean under RIM: a copy of the online backbone whose BN statistics are re-estimated on
        ONLINE_LINEAR.BN_IMAGES clean training images, for the online validation (training keeps its own);
        None otherwise."""
        cfg = self.cfg
        if not (cfg.RIM.ENABLED and cfg.ONLINE_LINEAR.VIEWS == "clean"):
            return None
        backbone = local_batch_norm(copy.deepcopy(self.model.backbone))  # this process alone: no SyncBN exchange
        self._recompute_bn(backbone, cfg.ONLINE_LINEAR.BN_IMAGES)
        return backbone

    def _recompute_bn(self, backbone: torch.nn.Module, images: int) -> int:
        """`backbone`'s BN statistics re-estimated on `images` clean (evaluation-view) training images; how many."""
        d = self.cfg.DATA
        return recompute_bn(backbone, EvalDataset(self.splits.train, d.IMAGE_SIZE, d.MEAN, d.STD), images,
                            max(64, d.BATCH_SIZE), d.NUM_WORKERS, self.device)

    def online_linear(self, epoch: int) -> dict | None:
        """Top-1/top-5 of the online classifier on the clean validation split (main process), logged."""
        if not (self.num_classes and self.env.main):
            return None
        result = online_linear_accuracy(self.model, self.splits, self.cfg, self.device, self.clean_bn_backbone())
        self.progress.history["online_linear"] = {**result, "step": self.progress.step}
        self.log.write({"step": self.progress.step, "epoch": epoch, "online_linear_top1": result["top1"]})
        return result


__all__ = ["OnlineEvaluations"]
