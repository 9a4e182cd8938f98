"""Norm layers as detectron2 names them (get_norm), its all-reduce SyncBN, and the conversions between them.

Apart from the model because the solver (norm weight decay), precise BN and the trainer (SyncBN swap) use them too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


class NaiveSyncBatchNorm2d(nn.BatchNorm2d):
    """BN whose batch statistics are averaged over all processes (detectron2's naiveSyncBN).

    With one process, or in eval mode, it is plain BatchNorm2d. Works on gloo (CPU) and NCCL.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dtype = x.dtype
        x = x.float()
        mean = x.mean(dim=(0, 2, 3))
        meansqr = (x * x).mean(dim=(0, 2, 3))
        vec = all_reduce(torch.cat([mean, meansqr])) / dist.get_world_size()
        mean, meansqr = vec.split(self.num_features)
        var = meansqr - mean * mean
        with torch.no_grad():
            n = x.numel() / x.shape[1] * dist.get_world_size()
            self.num_batches_tracked += 1
            # momentum None (precise BN): cumulative average, as BatchNorm2d does
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean += m * (mean.detach() - self.running_mean)
            self.running_var += m * (var.detach() * n / max(n - 1, 1) - self.running_var)
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        bias = self.bias - mean * scale
        return (x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)).to(dtype)


def make_norm(kind: str, channels: int) -> nn.Module | None:
    """The norm layer a config names ("" = none), as detectron2's get_norm.

    SyncBN is torch's SyncBatchNorm (plain BN in one process); the engine swaps it for
    NaiveSyncBatchNorm2d under DDP on CPU, where torch's needs GPUs.
    """
    if kind == "":
        return None
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "naiveSyncBN":
        return NaiveSyncBatchNorm2d(channels)
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {kind!r}")


def resnet_norm_layer(kind: str) -> Any:
    """norm_layer factory for torchvision's ResNet (Identity when there is no norm)."""
    return lambda c: make_norm(kind, c) or nn.Identity()


BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)
NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def freeze_norms(module: nn.Module) -> nn.Module:
    """Replace every BN in `module` by FrozenBatchNorm2d holding the same statistics (detectron2's convert)."""
    if isinstance(module, BN_TYPES):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


def swap_sync_bn(module: nn.Module) -> None:
    """Replace every torch SyncBatchNorm in `module` by NaiveSyncBatchNorm2d with the same state (CPU DDP)."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            new = NaiveSyncBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.weight.device))
        else:
            swap_sync_bn(child)
