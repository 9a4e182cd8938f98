"""What a pretraining run checks while it trains: the online kNN monitor (with its raw-pixel anchor), the
online linear classifier's accuracy, and its progress bar."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pretrain.data.datasets import EvalDataset, subset
from pretrain.evaluation.accuracy import accuracy_metrics
from pretrain.evaluation.backbones import RawPixels
from pretrain.evaluation.knn import extract_features, knn_top1

#: the seed of the online kNN's subsets: fixed, so every run on a dataset is scored on the same images
SUBSET_SEED = 0


def fixed_subset(size: int, count: int) -> list[int]:
    """`count` indices of range(size) drawn once with SUBSET_SEED, sorted (all of them when count is 0 or >= size)."""
    if count <= 0 or count >= size:
        return list(range(size))
    return sorted(np.random.default_rng(SUBSET_SEED).permutation(size)[:count].tolist())


class KnnMonitor:
    """The online kNN top-1 (TRAIN.KNN_K, KNN_T) of a backbone: a memory bank of TRAIN.KNN_BANK labelled training
    images and TRAIN.KNN_QUERIES validation images (fixed random subsets; 0 = all), in the evaluation view.

    `pixels()` scores the same queries against the same bank on raw (normalised) pixels: the anchor a
    representation has to beat.
    """

    def __init__(self, splits, cfg):
        d, t = cfg.DATA, cfg.TRAIN
        self.bank = subset(splits.knn_train, fixed_subset(len(splits.knn_train), t.KNN_BANK))
        self.queries = subset(splits.knn_val, fixed_subset(len(splits.knn_val), t.KNN_QUERIES))
        self.train = EvalDataset(self.bank, d.IMAGE_SIZE, d.MEAN, d.STD)
        self.val = EvalDataset(self.queries, d.IMAGE_SIZE, d.MEAN, d.STD)
        self.k, self.temperature = t.KNN_K, t.KNN_T
        self.grey = d.DATASET == "idx"  # the MNIST family: grey images served as RGB
        self.batch, self.workers = max(64, d.BATCH_SIZE), d.NUM_WORKERS

    def protocol(self) -> dict:
        """What the record says of the monitor."""
        return {"k": self.k, "temperature": float(self.temperature), "bank": len(self.bank),
                "queries": len(self.queries)}

    def __call__(self, backbone: nn.Module, device) -> float:
        ftr, ltr = extract_features(backbone, self.train, self.batch, self.workers, device)
        fva, lva = extract_features(backbone, self.val, self.batch, self.workers, device)
        num_classes = int(max(ltr.max(), lva.max()).item()) + 1
        return knn_top1(ftr, ltr, fva, lva, num_classes, self.k, self.temperature)

    def describe(self) -> str:
        m = self.protocol()
        return f"k={m['k']}, T={m['temperature']:g}, bank {m['bank']}, {m['queries']} queries"

    def evaluate(self, backbone: nn.Module, device, history: dict, key: str, step: int, epoch: int,
                 wall_time_s: float) -> tuple[float, bool]:
        """Score the backbone after `step` steps into a run's history: `key` and one point of its learning curve
        (history["knn_curve"]: step, epoch, training and wall time, top-1), once per step; with
        key "knn_top1_init" also the raw pixels (history["knn_top1_pixels"]). Returns (top-1, new)."""
        curve = history.setdefault("knn_curve", [])
        if curve and curve[-1]["step"] == step:
            return curve[-1]["top1"], False
        acc = history[key] = self(backbone, device)
        curve.append({"step": step, "epoch": epoch, "train_time_s": round(history.get("train_time_s", 0.0), 3),
                      "wall_time_s": round(wall_time_s, 3), "top1": acc})
        if key == "knn_top1_init":
            history["knn_top1_pixels"] = self.pixels()
            print(f"kNN top-1 at initialisation: {acc:.2f}% (raw pixels: {history['knn_top1_pixels']:.2f}%; "
                  f"{self.describe()})", flush=True)
        return acc, True

    def pixels(self) -> float:
        """The same kNN on the flattened normalised pixels of the evaluation view."""
        return self(RawPixels(self.grey), "cpu")


def knn_monitor(splits, cfg) -> KnnMonitor | None:
    """The online kNN monitor of a run, or None when it is off or the data has no labelled splits."""
    if not (cfg.TRAIN.KNN_PERIOD or cfg.TRAIN.KNN_PERIOD_STEPS) or splits.knn_train is None or splits.knn_val is None:
        return None
    return KnnMonitor(splits, cfg)


@torch.no_grad()
def online_linear_accuracy(model, splits, cfg, device, backbone=None) -> dict:
    """The online classifier on the clean validation split, backbone and classifier in eval mode (BN
    running statistics), as solo-learn validates it: {"top1", "top5", "num_val"}. `backbone`: another
    backbone to take the features from (the online one with clean-image BN statistics)."""
    d = cfg.DATA
    val = EvalDataset(splits.knn_val, d.IMAGE_SIZE, d.MEAN, d.STD)
    backbone = model.backbone if backbone is None else backbone
    feats, labels = extract_features(backbone, val, max(64, d.BATCH_SIZE), d.NUM_WORKERS, device, normalize=False)
    classifier = model.classifier
    was_training = classifier.training
    classifier.eval()
    scores = classifier(feats.to(classifier.weight.device)).float().cpu()
    classifier.train(was_training)
    metrics = accuracy_metrics(scores, labels, classifier.out_features)
    return {"top1": metrics["top1"], "top5": metrics["top5"], "num_val": len(val)}


def progress_bar(enabled: bool, total_images: int, epoch: int, epochs: int):
    """A tqdm bar counting images of one epoch, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_images, unit="img", unit_scale=True, desc=f"epoch {epoch + 1}/{epochs}",
                dynamic_ncols=True, leave=False, mininterval=1.0)
