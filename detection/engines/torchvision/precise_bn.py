"""Precise BN (detectron2's TEST.PRECISE_BN): BN running statistics recomputed as the true average over
training batches before evaluation, since the EMA of the last iterations is a poor estimate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detection.engines.torchvision.amp import autocast
from detection.engines.torchvision.data import train_loader
from detection.engines.torchvision.norms import BN_TYPES
from rimifm.distributed import Distributed
from rimifm.precise_bn import cumulative_bn_statistics
from rimifm.seeding import STREAM_DETECTION, step_seed


@torch.no_grad()
def precise_bn(cfg: Any, model: nn.Module, dicts: list[dict[str, Any]], seed: int, env: Distributed, at_iter: int) -> None:
    """Replace BN running statistics by their true average over TEST.PRECISE_BN.NUM_ITER training batches."""
    if cfg.TEST.PRECISE_BN.NUM_ITER <= 0:
        return
    with cumulative_bn_statistics(model, BN_TYPES) as bns:
        if not bns:
            return
        loader = train_loader(dicts, cfg, seed + 1 + at_iter, env.rank, env.world, stream=1, workers=0)
        for i in range(cfg.TEST.PRECISE_BN.NUM_ITER):
            torch.manual_seed(step_seed(seed, at_iter * 1000 + i, env.rank, STREAM_DETECTION) + 1)
            batch = next(loader)
            with autocast(env.device):
                model([b[0].to(env.device) for b in batch],
                      [{k: v.to(env.device) for k, v in b[1].items()} for b in batch])
