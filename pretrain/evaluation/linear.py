"""The linear probe: a linear classifier trained on frozen, standardised features (SGD or LARS, cosine LR)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.training.optim import LARS, param_groups, warmup_cosine
from rimifm.errors import UserError


def _make_optimizer(head: nn.Linear, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(head, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name != "sgd":
        raise UserError(f"unknown --optimizer {name!r}; choose sgd or lars")
    for g in groups:
        g.pop("lars_exclude")
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def train_linear(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int, epochs: int = 100,
                 lr: float = 0.1, optimizer: str = "sgd", batch_size: int = 256, weight_decay: float = 0.0,
                 seed: int = 0, epoch_features: Callable[[int], torch.Tensor] | None = None,
                 device: torch.device | str = "cpu") -> nn.Linear:
    """Train a linear classifier (no BatchNorm) with momentum 0.9 and a cosine LR schedule per step.

    `epoch_features(epoch)` (augment mode) returns that epoch's train features, row-aligned with
    `train_labels`; otherwise the fixed `train_feats` are used every epoch.
    """
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1 for the linear probe (got {epochs})")
    if batch_size < 1 or lr <= 0:
        raise UserError("--batch-size must be >= 1 and --lr > 0")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_feats.shape[1], num_classes).to(device)
    opt = _make_optimizer(head, optimizer, lr, weight_decay)
    schedule = warmup_cosine(0.0)
    n = train_feats.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    labels = train_labels.to(device)
    step = 0
    for epoch in range(epochs):
        feats = (epoch_features(epoch) if epoch_features is not None else train_feats).to(device)
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * schedule(step / total)
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.cpu()


class Standardiser:
    """Per-dimension (x - mean) / std with train statistics: a fixed input scaling, not a trained BN."""

    def __init__(self, feats: torch.Tensor):
        self.mean = feats.mean(0, keepdim=True)
        self.std = feats.std(0, keepdim=True).clamp_min(1e-6) if feats.shape[0] > 1 else torch.ones_like(self.mean)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


__all__ = ["train_linear", "Standardiser"]
