"""Linear classifiers on a frozen backbone: the published protocol (`train_linear_recipe`, augmented views
through the backbone every epoch) and the fast cached probe (`train_linear`, fixed standardised features)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.evaluation.recipes import make_head, schedule_factor
from pretrain.optim import LARS, param_groups, warmup_cosine
from rimifm.errors import UserError


def _make_optimizer(head: nn.Linear, name: str, lr: float, weight_decay: float, lars_form: str = "byol",
                    exclude_bias: bool = True) -> torch.optim.Optimizer:
    """Momentum-0.9 SGD or LARS over the head; `exclude_bias` keeps the bias out of weight decay and LARS."""
    groups = param_groups(head, weight_decay, exclude_bias_n_norm_wd=exclude_bias,
                          lars_exclude_bias_n_norm=exclude_bias)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, form=lars_form)
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


def train_linear_recipe(backbone: nn.Module, dataset_for_epoch: Callable[[int], torch.utils.data.Dataset],
                        feature_dim: int, num_classes: int, recipe, seed: int = 0, workers: int = 0,
                        device: torch.device | str = "cpu",
                        after_epoch: Callable[[int, nn.Linear], None] | None = None) -> nn.Linear:
    """The offline linear protocol of a published recipe (pretrain/evaluation/recipes.py).

    Every epoch, `dataset_for_epoch(epoch)` gives that epoch's augmented (crop + flip) labelled views;
    batches go through the frozen backbone in eval mode (BN running statistics, no gradient) and the raw
    pooled features train the classifier with the recipe's optimizer, LR (x batch / 256 when the recipe
    scales it), weight decay and per-epoch schedule. `after_epoch(epoch, head)` runs after each epoch (the
    per-epoch validation of recipes that report their best epoch).
    """
    torch.manual_seed(seed)
    head = make_head(feature_dim, num_classes, recipe).to(device)
    base_lr = recipe.lr * (recipe.batch_size / 256 if recipe.scale_lr else 1.0)
    # LARS is apex's LARC as SimSiam's main_lincls uses it: trust 0.001, no clip, nothing excluded
    opt = _make_optimizer(head, recipe.optimizer, base_lr, recipe.weight_decay, lars_form="solo-learn",
                          exclude_bias=False)
    was_training = backbone.training
    backbone.eval()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(recipe.epochs):
        for g in opt.param_groups:
            g["lr"] = base_lr * schedule_factor(recipe, epoch)
        loader = torch.utils.data.DataLoader(dataset_for_epoch(epoch), batch_size=recipe.batch_size, shuffle=True,
                                             generator=gen, num_workers=workers)
        for x, y in loader:
            with torch.no_grad():
                feats = backbone(x.to(device, non_blocking=True)).float()
            loss = F.cross_entropy(head(feats), torch.as_tensor(y).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch, head)
    backbone.train(was_training)
    return head.cpu()


class Standardiser:
    """Per-dimension (x - mean) / std with train statistics: a fixed input scaling, not a trained BN."""

    def __init__(self, feats: torch.Tensor):
        self.mean = feats.mean(0, keepdim=True)
        self.std = feats.std(0, keepdim=True).clamp_min(1e-6) if feats.shape[0] > 1 else torch.ones_like(self.mean)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


__all__ = ["train_linear", "train_linear_recipe", "Standardiser"]
