"""Precise BN: BatchNorm running statistics recomputed as the true average over some batches.

The running statistics a network ends training with are an EMA over its last batches, which can be a
poor estimate, and with RIM they come from masked images while evaluation feeds clean ones. Inside
`cumulative_bn_statistics` every BatchNorm in training mode starts from reset statistics and averages
all batches seen with equal weight (PyTorch's `momentum=None`); the caller runs the batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_BN = (nn.modules.batchnorm._BatchNorm,)


def _tracking_bns(model: nn.Module, bn_types: tuple[type, ...]) -> list[nn.Module]:
    """The training-mode BN layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, bn_types) and m.training and m.track_running_stats]


@contextmanager
def cumulative_bn_statistics(model: nn.Module, bn_types: tuple[type, ...] = _BN) -> Iterator[list[nn.Module]]:
    """Reset the running statistics of the training-mode BN layers of `model` and make them a cumulative
    average (momentum None) while the block runs; their momenta are restored afterwards. Yields the layers."""
    bns = _tracking_bns(model, bn_types)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    try:
        yield bns
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


@contextmanager
def frozen_bn_statistics(model: nn.Module, bn_types: tuple[type, ...] = _BN) -> Iterator[list[nn.Module]]:
    """Training-mode BN layers of `model` normalise with their batch's statistics but leave their running ones
    (means, variances and batch counts) as they are while the block runs (momentum 0, the counts restored)."""
    bns = _tracking_bns(model, bn_types)
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield bns
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def local_batch_norm(model: nn.Module) -> nn.Module:
    """`model` with every SyncBatchNorm replaced by a BatchNorm2d holding the same parameters and statistics, so
    that one process can run it in training mode alone (SyncBatchNorm would wait for the others). In place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            device = next(iter([*child.parameters(), *child.buffers()]), torch.empty(0)).device
            setattr(model, name, bn.to(device).train(child.training))
        else:
            local_batch_norm(child)
    return model


__all__ = ["cumulative_bn_statistics", "frozen_bn_statistics", "local_batch_norm"]
