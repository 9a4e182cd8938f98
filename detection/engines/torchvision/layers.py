"""Pieces the backbone, the RPN and the RoI heads share: conv + norm blocks, detectron2's (caffe2) inits,
its smooth-L1 and box clipping; one place so that every head builds and scores boxes the same way.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from detection.engines.torchvision.norms import make_norm


def c2_msra_fill(module: nn.Module) -> None:
    """detectron2/caffe2 MSRA init: kaiming normal (fan_out, relu), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2/caffe2 Xavier init: kaiming uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvNorm(nn.Sequential):
    """Conv (bias only without a norm), optional norm, optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int, norm: str, relu: bool, init: str = "msra") -> None:
        layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm == ""))]
        (c2_msra_fill if init == "msra" else c2_xavier_fill)(layers[0][1])
        n = make_norm(norm, cout)
        if n is not None:
            layers.append(("norm", n))
        if relu:
            layers.append(("relu", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed smooth-L1 as detectron2 defines it (beta < 1e-5 is plain L1)."""
    if beta < 1e-5:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1 in the last dimension) clamped into an image of `size` (h, w)."""
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
