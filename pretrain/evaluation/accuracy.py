"""Top-k accuracy of class scores, the metrics every classification protocol (kNN, linear) reports."""

from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores."""
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return 100.0 * hit.float().mean().item()


def accuracy_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float | None]:
    """{"top1", "top5"}; top5 is None with fewer than 5 classes."""
    return {"top1": topk_accuracy(scores, labels, 1),
            "top5": topk_accuracy(scores, labels, 5) if num_classes >= 5 else None}


__all__ = ["topk_accuracy", "accuracy_metrics"]
