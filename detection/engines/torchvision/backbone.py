"""Backbones of the detector: torchvision's ResNet cut into detectron2's stages (res2..res5), with its
freezing, and the FPN (ResNet-FPN) or res4 alone (ResNet-C4) on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detection.engines.torchvision.layers import ConvNorm
from detection.engines.torchvision.norms import freeze_norms, resnet_norm_layer
from rimifm.resnets import ResNetArch
from rimifm.resnets import build_resnet as build_arch

#: torchvision's names of res2..res5
STAGES = ("layer1", "layer2", "layer3", "layer4")


def build_resnet(arch: ResNetArch, norm: str) -> torchvision.models.ResNet:
    """The ResNet of `arch` (rimifm/resnets.py), randomly initialised, with the config's norm (MODEL.RESNETS.NORM)."""
    return build_arch(arch, norm_layer=resnet_norm_layer(norm))


def stage_out_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage (its last block's last conv)."""
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class ResNetBody(nn.Module):
    """torchvision ResNet stem and stages (names as torchvision's: conv1, bn1, layer1..), returning res2.."""

    def __init__(self, net: torchvision.models.ResNet, stages: int, stem_stride: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.stages = stages
        for name in STAGES[:stages]:
            setattr(self, name, getattr(net, name))
        self.channels = {f"res{i + 2}": stage_out_channels(getattr(net, STAGES[i])) for i in range(stages)}
        self.strides = {f"res{i + 2}": stem_stride * 2 ** i for i in range(stages)}  # res2: the stem's stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(self.stages):
            x = getattr(self, STAGES[i])(x)
            out[f"res{i + 2}"] = x
        return out

    def freeze(self, freeze_at: int) -> None:
        """detectron2's FREEZE_AT: 1 = stem, 2 = stem + res2, ...: no gradients, FrozenBN statistics."""
        parts = [("conv1", "bn1")] + [(s,) for s in STAGES[:self.stages]]
        for names in parts[:max(freeze_at, 0)]:
            for name in names:
                module = getattr(self, name)
                for p in module.parameters():
                    p.requires_grad_(False)
                new = freeze_norms(module)
                if new is not module:
                    setattr(self, name, new)


class FPN(nn.Module):
    """detectron2's FPN: 1x1 laterals, 3x3 outputs, nearest 2x top-down, P6 = max-pool(k=1, s=2) of the top."""

    def __init__(self, body: ResNetBody, in_features: Sequence[str], out_channels: int, norm: str,
                 fuse: str) -> None:
        super().__init__()
        self.body = body
        self.in_features = list(in_features)
        self.fuse = fuse
        self.lateral = nn.ModuleList()
        self.output = nn.ModuleList()
        for name in self.in_features:
            self.lateral.append(ConvNorm(body.channels[name], out_channels, 1, norm, relu=False, init="xavier"))
            self.output.append(ConvNorm(out_channels, out_channels, 3, norm, relu=False, init="xavier"))
        levels = [int(n[3:]) for n in self.in_features]
        self.out_names = [f"p{lv}" for lv in levels] + [f"p{levels[-1] + 1}"]
        self.strides = {f"p{lv}": 2 ** lv for lv in levels + [levels[-1] + 1]}
        self.channels = {n: out_channels for n in self.out_names}
        self.size_divisibility = self.strides[self.out_names[-2]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        prev = self.lateral[-1](feats[self.in_features[-1]])
        outs = [self.output[-1](prev)]
        for i in range(len(self.in_features) - 2, -1, -1):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = self.lateral[i](feats[self.in_features[i]]) + top_down
            if self.fuse == "avg":
                prev = prev / 2
            outs.insert(0, self.output[i](prev))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))
        return dict(zip(self.out_names, outs))


class C4Backbone(nn.Module):
    """ResNet up to res4 (stride 16 with the ImageNet stem); res5 goes to the box head."""

    def __init__(self, body: ResNetBody) -> None:
        super().__init__()
        self.body = body
        self.strides = {"res4": body.strides["res4"]}
        self.channels = {"res4": body.channels["res4"]}
        self.size_divisibility = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res4": self.body(x)["res4"]}
