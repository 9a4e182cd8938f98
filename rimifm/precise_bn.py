"""Precise BN: BatchNorm running statistics recomputed as the true average over some batches.

The running statistics a network ends training with are an EMA over its last batches, which can be a
poor estimate, and with RIM they come from masked images while evaluation feeds clean ones. Inside
`cumulative_bn_statistics` every BatchNorm in training mode starts from reset statistics and averages
all batches seen with equal weight (PyTorch's `momentum=None`); the caller runs the batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def cumulative_bn_statistics(model: nn.Module, bn_types: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)
                             ) -> Iterator[list[nn.Module]]:
    """Reset the running statistics of the training-mode BN layers of `model` and make them a cumulative
    average while the block runs; their momenta are restored afterwards. Yields the layers (may be empty)."""
    bns = [m for m in model.modules() if isinstance(m, bn_types) and m.training and m.track_running_stats]
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
def frozen_bn_statistics(model: nn.Module, bn_types: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)
                         ) -> Iterator[list[nn.Module]]:
    """Training-mode BN layers of `model` normalise with their batch's statistics but leave their running ones
    as they are while the block runs (momentum 0); their momenta are restored afterwards."""
    bns = [m for m in model.modules() if isinstance(m, bn_types) and m.training and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield bns
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


__all__ = ["cumulative_bn_statistics", "frozen_bn_statistics"]
