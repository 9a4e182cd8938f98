"""What a pretraining run checks while it trains: the online kNN monitor, the online linear classifier's
accuracy, and its progress bar."""

from __future__ import annotations

import torch

from pretrain.data.datasets import EvalDataset
from pretrain.evaluation.accuracy import accuracy_metrics
from pretrain.evaluation.knn import extract_features, knn_top1


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


@torch.no_grad()
def online_linear_accuracy(model, splits, cfg, device) -> dict:
    """The online classifier on the clean validation split, backbone and classifier in eval mode (BN
    running statistics), as solo-learn validates it: {"top1", "top5", "num_val"}."""
    d = cfg.DATA
    val = EvalDataset(splits.knn_val, d.IMAGE_SIZE, d.MEAN, d.STD)
    feats, labels = extract_features(model.backbone, val, max(64, d.BATCH_SIZE), d.NUM_WORKERS, device,
                                     normalize=False)
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
