"""Backbones (the ResNets of rimifm/resnets.py, fc removed) and the MLP heads of BYOL and SimSiam."""

from __future__ import annotations

import torch
from torch import nn

from rimifm.resnets import ARCHS, ResNetArch, build_resnet, get_arch

#: pooled feature channels of every named backbone (resnet101 is evaluated, not pretrained, here)
FEATURE_DIMS = {name: arch.feature_dim for name, arch in ARCHS.items()}


def backbone_arch(name: str = "resnet18", cifar_stem: bool = False) -> ResNetArch:
    """The architecture of MODEL.BACKBONE `name`; MODEL.CIFAR_STEM replaces its stem by the 3x3 stride-1 one."""
    arch = get_arch(name)
    return arch.with_stem("cifar") if cifar_stem else arch


def build_backbone(name: str = "resnet18", cifar_stem: bool = False, zero_init_residual: bool = False,
                   cifar_stem_padding: int = 2) -> nn.Module:
    """A randomly initialised ResNet whose forward returns pooled features (fc removed).

    `name` is one of rimifm.resnets.ARCHS (torchvision's ResNets, or the CPU-sized `resnet_tiny`).
    cifar_stem replaces the stem with solo-learn's CIFAR stem: a 3x3 stride-1 conv with
    `cifar_stem_padding` (solo-learn: 2, so a 32x32 input gives a 34x34 map; many other CIFAR
    ResNets use 1), no bias, PyTorch's default Conv2d initialisation (torchvision widths), and no max-pool.
    """
    arch = backbone_arch(name, cifar_stem)
    net = build_resnet(arch, zero_init_residual, stem_padding=cifar_stem_padding if cifar_stem else None)
    net.fc = nn.Identity()
    net.feature_dim = arch.feature_dim
    net.arch = arch
    return net


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a Linear; `last_bn` adds SimSiam's affine-free BN on the output.

    Hidden linears have no bias when followed by BN (the bias would be cancelled).
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def byol_projector(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, layers: int = 2) -> nn.Sequential:
    """BYOL projector: Linear-BN-ReLU-Linear (4096 -> 256 in the paper)."""
    return mlp(in_dim, hidden_dim, out_dim, layers=layers)


def byol_predictor(dim: int = 256, hidden_dim: int = 4096) -> nn.Sequential:
    """BYOL predictor: the same shape as the projector, dim -> hidden -> dim."""
    return mlp(dim, hidden_dim, dim, layers=2)


def simsiam_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048, layers: int = 3) -> nn.Sequential:
    """SimSiam projector: every linear followed by BN, the last BN without affine parameters."""
    return mlp(in_dim, hidden_dim, out_dim, layers=layers, last_bn=True)


def simsiam_predictor(dim: int = 2048, hidden_dim: int = 512) -> nn.Sequential:
    """SimSiam predictor: a bottleneck dim -> 512 -> dim, no BN on the output."""
    return mlp(dim, hidden_dim, dim, layers=2)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online for parameters only.

    Buffers (BN running statistics) are *not* copied: as in BYOL, the target keeps its own, updated by
    its own forward passes. With RIM the online statistics come from masked images, which the target
    (fed clean views) never sees, so copying them would give the target statistics of the wrong inputs.
    """
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
