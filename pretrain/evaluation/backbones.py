"""The frozen backbone an evaluation measures: ours, a third-party ResNet, a detectron2 .pkl, or random init.

Whatever the source, the network is pretrain/method/models.py's build_backbone (one ResNet and CIFAR
stem definition), and a BackboneSource describes it for the record and the feature-cache key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pretrain.method.models import FEATURE_DIMS, backbone_arch, build_backbone
from rimifm.errors import UserError
from rimifm.io import file_sha256, load_checkpoint
from rimifm.resnets import ARCHS, STEMS, ResNetArch, arch_for, arch_from_metadata, build_resnet

#: the conv1 kernel of each stem
STEM_KERNELS = {name: kernel for name, (kernel, _, _) in STEMS.items()}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneSource:
    """Where the evaluated weights come from, for the record and the cache key."""

    kind: str  # "ours" | "external" | "random-init" | "raw-pixels"
    backbone: str
    cifar_stem: bool
    weights_id: str  # sha256 of the checkpoint file, or "random-init-<backbone>[-cifar]-s<seed>"
    checkpoint: str | None = None
    layout: str = ""
    method: str = "external"
    rim: dict | None = None
    ifm: dict | None = None
    seed: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    extra: dict = field(default_factory=dict)


def _resnet(arch: ResNetArch, cifar_stem_padding: int = 2) -> nn.Module:
    """The ResNet of `arch` (fc removed) for a loaded checkpoint, as build_backbone makes it."""
    net = build_resnet(arch, stem_padding=cifar_stem_padding if arch.stem == "cifar" else None)
    net.fc = nn.Identity()
    net.feature_dim, net.arch = arch.feature_dim, arch
    return net


def random_backbone(name: str = "resnet18", cifar_stem: bool = False, seed: int = 0,
                    cifar_stem_padding: int = 2) -> tuple[nn.Module, BackboneSource]:
    """A randomly initialised backbone (seeded), the baseline every pretrained one should beat."""
    if name not in FEATURE_DIMS:
        raise UserError(f"unknown --backbone {name!r}; choose one of {', '.join(FEATURE_DIMS)}")
    torch.manual_seed(seed)
    net = build_backbone(name, cifar_stem, cifar_stem_padding=cifar_stem_padding)
    wid = f"random-init-{name}{'-cifar' if cifar_stem else ''}-s{seed}"
    return net, BackboneSource("random-init", name, cifar_stem, wid, method="random-init", seed=seed)


class RawPixels(nn.Module):
    """The flattened pixels as features; `grey` keeps one of three equal channels (a grey image served as RGB),
    which leaves every cosine similarity as it is at a third of the size."""

    def __init__(self, grey: bool = False):
        super().__init__()
        self.grey = grey

    def forward(self, x):
        return (x[:, :1] if self.grey else x).flatten(1)


def raw_pixels(grey: bool = False) -> tuple[nn.Module, BackboneSource]:
    """No network: the flattened normalised pixels of the evaluation view are the features (an anchor)."""
    return RawPixels(grey), BackboneSource("raw-pixels", "pixels", False, "raw-pixels", method="raw-pixels")


def _checkpoint_arch(ckpt: dict, tv: dict[str, torch.Tensor], depth: int, layout: str, path: Path) -> ResNetArch:
    """The architecture of loaded backbone weights: named by the file (our checkpoints, converted .pkl files),
    else torchvision's depth at the width of conv1 with the stem its kernel implies (3x3: cifar; 7x7: imagenet)."""
    width = int(tv["conv1.weight"].shape[0])
    kernel_3x3 = tuple(tv["conv1.weight"].shape[-2:]) == (3, 3)
    meta = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if isinstance(meta, dict):
        arch = arch_from_metadata(meta, str(path))
    elif isinstance(ckpt, dict) and ckpt.get("backbone") in ARCHS:
        arch = backbone_arch(ckpt["backbone"], bool(ckpt.get("cifar_stem", False)))
    else:  # the registered architecture of this layout and width, its stem replaced when conv1 says otherwise
        arch = arch_for(depth, width)
        if (STEM_KERNELS[arch.stem] == 3) != kernel_3x3:
            arch = arch.with_stem("cifar" if kernel_3x3 else "imagenet")
    if (arch.depth, arch.width) != (depth, width) or (STEM_KERNELS[arch.stem] == 3) != kernel_3x3:
        raise UserError(f"{path}: it says its backbone is {arch.describe()}, but its weights are a ResNet-{depth} "
                        f"layout with conv1 {tuple(tv['conv1.weight'].shape)}")
    return arch


def _our_source_info(ckpt: dict) -> dict:
    """method / RIM / IFM / SEED / image size / normalisation of the source run, from its config YAML."""
    info: dict[str, Any] = {"method": str(ckpt.get("method", "external"))}
    text = ckpt.get("config")
    if not isinstance(text, str):
        return info
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return info
    if not isinstance(cfg, dict):
        return info
    info["method"] = str(cfg.get("METHOD", info["method"]))
    info["rim"] = cfg.get("RIM")
    info["ifm"] = cfg.get("IFM")
    info["seed"] = cfg.get("SEED")
    data = cfg.get("DATA") or {}
    if isinstance(data, dict):
        info["image_size"] = data.get("IMAGE_SIZE")
        if isinstance(data.get("MEAN"), list) and isinstance(data.get("STD"), list):
            info["mean"], info["std"] = tuple(data["MEAN"]), tuple(data["STD"])
    return info


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    """Load backbone tensors checking every key (num_batches_tracked may be absent; there is no fc)."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: backbone tensors do not fit the ResNet: "
                        f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise UserError(f"{path}: backbone keys do not match the ResNet (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}); is this a ResNet checkpoint?")


def load_backbone(path: str | os.PathLike, target: bool = False, unsafe_legacy_pickle: bool = False) -> tuple[nn.Module, BackboneSource]:
    """Backbone of a checkpoint: ours (online, or EMA target with `target`), any layout
    rimifm/resnet_weights.py detects, or a detectron2 .pkl; fc and heads are ignored."""
    from rimifm.d2_pkl import ARCH_KEY, load_d2_pkl
    from rimifm.resnet_weights import OUR_FORMAT, convert_checkpoint, d2_to_torchvision, infer_depth

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass an existing file (or `none --random-init`)")
    if path.suffix == ".pkl":
        if target:
            raise UserError(f"--target needs a pretraining checkpoint with an EMA branch; {path} is a "
                            "detectron2 weights pickle holding one backbone - drop --target")
        pkl = load_d2_pkl(path)
        tv = d2_to_torchvision(pkl["model"])
        depth, layout, ckpt = infer_depth(tv), "detectron2 pickle", {"arch": pkl.get(ARCH_KEY)} if ARCH_KEY in pkl else {}
    else:
        ckpt = load_checkpoint(path, unsafe_legacy_pickle)
        try:
            conv = convert_checkpoint(ckpt, target=target)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        tv = d2_to_torchvision(conv.model)
        depth, layout = conv.depth, conv.layout
    ours = isinstance(ckpt, dict) and ckpt.get("format") == OUR_FORMAT
    arch = _checkpoint_arch(ckpt, tv, depth, layout, path)
    cifar_stem = arch.stem == "cifar"
    # the stem's padding is not in the weights: our checkpoints say it (those from before the key were
    # trained with 1); solo-learn's layout uses 2; other CIFAR ResNets usually 1
    padding = int(ckpt.get("cifar_stem_padding", 1)) if ours else 2 if layout.startswith("solo-learn") else 1
    net = _resnet(arch, padding)
    _load_strict(net, tv, path)
    src = BackboneSource("ours" if ours else "external", arch.name, cifar_stem, file_sha256(path),
                         checkpoint=str(path), layout=layout)
    if ours:
        info = _our_source_info(ckpt)
        src.method, src.rim, src.ifm, src.seed = info["method"], info.get("rim"), info.get("ifm"), info.get("seed")
        src.image_size = info.get("image_size")
        src.mean, src.std = info.get("mean", IMAGENET_MEAN), info.get("std", IMAGENET_STD)
    return net, src


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BackboneSource", "load_backbone", "random_backbone", "raw_pixels"]
