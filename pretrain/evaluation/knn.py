"""Weighted kNN classification on frozen features (cosine similarity, exp(sim / T) votes).

The protocol of InstDisc/MoCo/lightly's CIFAR benchmarks: k = 200, T = 0.1 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pretrain.evaluation.accuracy import accuracy_metrics
from rimifm.errors import UserError


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 256, num_workers: int = 0,
                     device: torch.device | str = "cpu", normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (L2-normalised unless `normalize=False`) and labels of a dataset, backbone in eval
    mode (restored after)."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for x, y in loader:
        f = backbone(x.to(device, non_blocking=True)).float()
        feats.append((F.normalize(f, dim=1) if normalize else f).cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_query, num_classes): sum over the k most similar training samples of
    exp(cos / T) for their class. Features must be L2-normalised."""
    k = min(k, train_feats.shape[0])
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        sim = query_feats[start:start + chunk] @ train_feats.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        scores.scatter_add_(1, train_labels[top_idx], weights)
        out.append(scores)
    return torch.cat(out)


def knn_top1(train_feats, train_labels, query_feats, query_labels, num_classes: int, k: int = 200,
             temperature: float = 0.1) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier."""
    scores = knn_predict(train_feats, train_labels, query_feats, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1) == query_labels).float().mean().item()


def knn_evaluate(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, num_classes: int, k: int = 200,
                 temperature: float = 0.1) -> dict[str, float | None]:
    """Weighted kNN (cosine, exp(sim / T) votes) top-1/top-5 on L2-normalised features."""
    if k < 1:
        raise UserError(f"--k must be >= 1 (got {k})")
    if temperature <= 0:
        raise UserError(f"--temperature must be > 0 (got {temperature})")
    scores = knn_predict(train_feats, train_labels, val_feats, num_classes, k, temperature)
    return accuracy_metrics(scores, val_labels, num_classes)
