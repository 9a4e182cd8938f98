"""What a pretraining run reports while it trains: metrics.jsonl, TensorBoard scalars and the online kNN."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pretrain.data.datasets import EvalDataset
from pretrain.evaluation.knn import extract_features, knn_top1
from rimifm.io import trim_json_lines


class MetricsLog:
    """metrics.jsonl (append-only, trimmed back to the resume point) and TensorBoard scalars."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        trim_json_lines(self.path, lambda row: row.get("step", 0) <= resume_step)
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


def progress_bar(enabled: bool, total_images: int, epoch: int, epochs: int):
    """A tqdm bar counting images of one epoch, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_images, unit="img", unit_scale=True, desc=f"epoch {epoch + 1}/{epochs}",
                dynamic_ncols=True, leave=False, mininterval=1.0)
