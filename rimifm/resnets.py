"""The ResNet architectures of the suite: torchvision's ResNet-18/34/50/101 and a CPU-sized family, by name.

One definition serves pretraining (pretrain/method/models.py), classification evaluation and the
torchvision detection engine, so a backbone trained in one loads bit for bit in the others.

An architecture is a block layout (a depth: 10, 18 and 34 of basic blocks, 50 and 101 of bottlenecks;
torchvision has all but 10, one basic block per stage), a width (channels of the stem and of res2; each later stage doubles it, torchvision's
ResNets have 64) and a stem:

- `imagenet`: 7x7 stride-2 conv, then a 3x3 stride-2 max-pool (torchvision's; res2 at stride 4);
- `cifar`: 3x3 stride-1 conv, no max-pool (solo-learn's CIFAR stem; res2 at stride 1);
- `small`: 3x3 stride-2 conv, no max-pool (res2 at stride 2): the CPU family's stem for 28-32 px images.

Tensor names are torchvision's whatever the architecture (conv1, bn1, layer1..layer4), so the
converter's renaming to detectron2 (rimifm/resnet_weights.py) applies unchanged. The width is in the
weights (conv1 has `width` output channels); the stem's stride is not, so our checkpoints and converted
.pkl files name it (`arch_metadata`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from rimifm.errors import UserError

#: blocks per stage (layer1..layer4) and whether the blocks are bottlenecks, per torchvision depth
RESNET_LAYOUTS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    10: ((1, 1, 1, 1), False),  # not torchvision's: one basic block per stage (detectron2 has no ResNet-10)
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
}
#: stem name -> (kernel, stride, max-pool)
STEMS: dict[str, tuple[int, int, bool]] = {"imagenet": (7, 2, True), "cifar": (3, 1, False), "small": (3, 2, False)}


@dataclass(frozen=True)
class ResNetArch:
    """One ResNet architecture: block layout (torchvision depth), width of the stem and res2, stem."""

    name: str
    depth: int
    width: int = 64
    stem: str = "imagenet"

    @property
    def bottleneck(self) -> bool:
        return RESNET_LAYOUTS[self.depth][1]

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled features (res5's output)."""
        return self.width * 8 * (4 if self.bottleneck else 1)

    @property
    def stem_stride(self) -> int:
        """Stride of res2's output: the stem conv's stride times the max-pool's."""
        _, stride, pool = STEMS[self.stem]
        return stride * (2 if pool else 1)

    def with_stem(self, stem: str) -> ResNetArch:
        if stem not in STEMS:
            raise UserError(f"unknown ResNet stem {stem!r}; choose one of {', '.join(STEMS)}")
        return ResNetArch(self.name, self.depth, self.width, stem)

    def describe(self) -> str:
        """E.g. 'resnet_tiny (ResNet-18 layout, width 16, small stem)'."""
        return f"{self.name} (ResNet-{self.depth} layout, width {self.width}, {self.stem} stem)"


#: every architecture a config, a command-line option or a checkpoint can name
ARCHS: dict[str, ResNetArch] = {
    "resnet18": ResNetArch("resnet18", 18),
    "resnet34": ResNetArch("resnet34", 34),
    "resnet50": ResNetArch("resnet50", 50),
    "resnet101": ResNetArch("resnet101", 101),
    # the CPU-scale backbone of the fmnist_cpu_* recipes: one basic block per stage at 16-32-64-128 channels,
    # 3x3 stride-2 stem: 3.6 M multiply-adds and 0.31 M parameters at 28 px (ResNet-18 at 32 px, ImageNet stem: 37 M).
    # Chosen by measurement (docs/fashion_mnist.md): it learned fastest per second of CPU time.
    "resnet_tiny": ResNetArch("resnet_tiny", 10, 16, "small"),
}


def get_arch(name: str, option: str = "MODEL.BACKBONE") -> ResNetArch:
    """The registered architecture `name`; a UserError naming `option` and the choices otherwise."""
    arch = ARCHS.get(str(name))
    if arch is None:
        raise UserError(f"{option} {name!r} is not a known backbone; choose one of {', '.join(ARCHS)}")
    return arch


def arch_for(depth: int, width: int, stem: str | None = None) -> ResNetArch:
    """The registered architecture of this layout and width (with `stem` when given), else an unnamed one
    ('resnet<depth>-w<width>', ImageNet stem unless `stem` says otherwise)."""
    if depth not in RESNET_LAYOUTS:
        raise UserError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYOUTS)}")
    for arch in ARCHS.values():
        if (arch.depth, arch.width) == (depth, width):
            return arch if stem is None or arch.stem == stem else arch.with_stem(stem)
    return ResNetArch(f"resnet{depth}" + ("" if width == 64 else f"-w{width}"), depth, width, stem or "imagenet")


def arch_metadata(arch: ResNetArch) -> dict[str, Any]:
    """What a checkpoint or converted .pkl says of its architecture (the stem is not in the weights)."""
    return asdict(arch)


def arch_from_metadata(meta: Mapping[str, Any], where: str) -> ResNetArch:
    """Inverse of arch_metadata, checked."""
    try:
        arch = ResNetArch(str(meta["name"]), int(meta["depth"]), int(meta["width"]), str(meta["stem"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: its architecture entry {dict(meta)!r} is not valid") from None
    if arch.depth not in RESNET_LAYOUTS or arch.stem not in STEMS or arch.width < 1:
        raise UserError(f"{where}: its architecture entry {dict(meta)!r} names no ResNet this suite builds")
    return arch


def build_resnet(arch: ResNetArch, zero_init_residual: bool = False, stem_padding: int | None = None,
                 norm_layer: Callable[[int], nn.Module] | None = None) -> torchvision.models.ResNet:
    """A randomly initialised torchvision ResNet of `arch` (fc kept; callers remove it).

    torchvision's own ResNets come out exactly as torchvision builds them (same RNG draws). Another
    width rebuilds the stem and stages with torchvision's block code and initialisation. A 3x3 stem gets
    padding `stem_padding` (default 1; solo-learn's CIFAR stem uses 2, see pretrain/method/models.py).
    """
    blocks, bottleneck = RESNET_LAYOUTS[arch.depth]
    block = Bottleneck if bottleneck else BasicBlock
    net = torchvision.models.ResNet(block, list(blocks), zero_init_residual=zero_init_residual,
                                    norm_layer=norm_layer)
    if arch.width != 64:
        norm = net._norm_layer
        net.inplanes = arch.width
        net.bn1 = norm(arch.width)
        for i in range(4):
            setattr(net, f"layer{i + 1}", net._make_layer(block, arch.width * 2 ** i, blocks[i],
                                                            stride=1 if i == 0 else 2))
        net.fc = nn.Linear(arch.feature_dim, net.fc.out_features)
        _init_like_torchvision(net, zero_init_residual)
    kernel, stride, pool = STEMS[arch.stem]
    if arch.stem != "imagenet" or arch.width != 64:
        padding = kernel // 2 if stem_padding is None or kernel == 7 else stem_padding
        net.conv1 = nn.Conv2d(3, arch.width, kernel_size=kernel, stride=stride, padding=padding, bias=False)
        if arch.width != 64:
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if not pool:
        net.maxpool = nn.Identity()
    return net


def _init_like_torchvision(net: torchvision.models.ResNet, zero_init_residual: bool) -> None:
    """torchvision's ResNet initialisation (kaiming fan-out convs, unit norms, optional zero last-BN)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in net.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)) and last is not None and getattr(last, "weight", None) is not None:
                nn.init.constant_(last.weight, 0)


__all__ = ["ARCHS", "RESNET_LAYOUTS", "STEMS", "ResNetArch", "arch_for", "arch_from_metadata", "arch_metadata",
           "build_resnet", "get_arch"]
