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

from pretrain.method.models import FEATURE_DIMS, build_backbone
from rimifm.errors import UserError
from rimifm.io import file_sha256, load_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneSource:
    """Where the evaluated weights come from, for the record and the cache key."""

    kind: str  # "ours" | "external" | "random-init"
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


def _resnet(depth: int, cifar_stem: bool, cifar_stem_padding: int = 2) -> nn.Module:
    """build_backbone's ResNet-`depth` (fc removed) for a loaded checkpoint's depth."""
    name = f"resnet{depth}"
    if name not in FEATURE_DIMS:
        raise UserError(f"unsupported ResNet depth {depth}; choose one of {', '.join(FEATURE_DIMS)}")
    return build_backbone(name, cifar_stem, cifar_stem_padding=cifar_stem_padding)


def random_backbone(name: str = "resnet18", cifar_stem: bool = False, seed: int = 0) -> tuple[nn.Module, BackboneSource]:
    """A randomly initialised backbone (seeded), the baseline every pretrained one should beat."""
    if name not in FEATURE_DIMS:
        raise UserError(f"unknown --backbone {name!r}; choose one of {', '.join(FEATURE_DIMS)}")
    torch.manual_seed(seed)
    net = build_backbone(name, cifar_stem)
    wid = f"random-init-{name}{'-cifar' if cifar_stem else ''}-s{seed}"
    return net, BackboneSource("random-init", name, cifar_stem, wid, method="random-init", seed=seed)


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
    from rimifm.resnet_weights import (
        OUR_FORMAT,
        convert_checkpoint,
        d2_to_torchvision,
        infer_depth,
        load_d2_pkl,
    )

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass an existing file (or `none --random-init`)")
    if path.suffix == ".pkl":
        if target:
            raise UserError(f"--target needs a pretraining checkpoint with an EMA branch; {path} is a "
                            "detectron2 weights pickle holding one backbone - drop --target")
        tv = d2_to_torchvision(load_d2_pkl(path)["model"])
        depth, layout, ckpt = infer_depth(tv), "detectron2 pickle", {}
    else:
        ckpt = load_checkpoint(path, unsafe_legacy_pickle)
        try:
            conv = convert_checkpoint(ckpt, target=target)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        tv = d2_to_torchvision(conv.model)
        depth, layout = conv.depth, conv.layout
    conv1 = tv["conv1.weight"]
    cifar_stem = tuple(conv1.shape[-2:]) == (3, 3)
    ours = isinstance(ckpt, dict) and ckpt.get("format") == OUR_FORMAT
    if ours and bool(ckpt.get("cifar_stem", cifar_stem)) != cifar_stem:
        raise UserError(f"{path}: cifar_stem={ckpt.get('cifar_stem')} but conv1 is {tuple(conv1.shape)}")
    # the stem's padding is not in the weights: our checkpoints say it (those from before the key were
    # trained with 1); solo-learn's layout uses 2; other CIFAR ResNets usually 1
    padding = int(ckpt.get("cifar_stem_padding", 1)) if ours else 2 if layout.startswith("solo-learn") else 1
    net = _resnet(depth, cifar_stem, padding)
    _load_strict(net, tv, path)
    src = BackboneSource("ours" if ours else "external", f"resnet{depth}", cifar_stem, file_sha256(path),
                         checkpoint=str(path), layout=layout)
    if ours:
        info = _our_source_info(ckpt)
        src.method, src.rim, src.ifm, src.seed = info["method"], info.get("rim"), info.get("ifm"), info.get("seed")
        src.image_size = info.get("image_size")
        src.mean, src.std = info.get("mean", IMAGENET_MEAN), info.get("std", IMAGENET_STD)
    return net, src


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BackboneSource", "load_backbone", "random_backbone"]
