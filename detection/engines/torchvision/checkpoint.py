"""Weights in and out of the torchvision engine: converted .pkl backbones, its own full-model checkpoints
(detectron2's file names and last_checkpoint marker, so that `--resume` finds them), and MODEL.WEIGHTS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detection.engines.torchvision.modeling import FasterRCNN, backbone_targets
from rimifm.d2_pkl import ARCH_KEY, load_d2_pkl
from rimifm.errors import UserError
from rimifm.io import DETECTION_CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from rimifm.io import atomic_torch_save, atomic_write_text, load_checkpoint
from rimifm.resnet_weights import d2_to_torchvision
from rimifm.resnets import ResNetArch, arch_from_metadata

logger = logging.getLogger("detection")


def arch_keys(arch: ResNetArch) -> str:
    """The config values that build `arch` in this engine."""
    return (f"MODEL.RESNETS.DEPTH {arch.depth}, MODEL.RESNETS.STEM_OUT_CHANNELS {arch.width}, "
            f"MODEL.RESNETS.RES2_OUT_CHANNELS {arch.width * (4 if arch.bottleneck else 1)} and RIMIFM.STEM {arch.stem}")


def check_arch(data: dict, path: str, want: ResNetArch) -> None:
    """A converted .pkl that names its architecture (ARCH_KEY) must name the one the config builds."""
    meta = data.get(ARCH_KEY)
    if not isinstance(meta, dict):
        return  # older or third-party files: the tensor shapes are checked one by one instead
    have = arch_from_metadata(meta, str(path))
    if (have.depth, have.width, have.stem) != (want.depth, want.width, want.stem):
        raise UserError(f"MODEL.WEIGHTS {path} holds {have.describe()}, but the config builds {want.describe()}: "
                        f"set {arch_keys(have)}")


def load_backbone_pkl(model: FasterRCNN, path: str) -> int:
    """Put a converted ResNet (.pkl, detectron2 names) into the model; returns the number of tensors loaded.

    Every backbone tensor of the model must be filled with a tensor of the same shape (UserError
    otherwise, naming what is missing or mismatched); tensors without a place are reported.
    """
    data = load_d2_pkl(path)
    check_arch(data, path, model.arch)
    source = d2_to_torchvision(data["model"])
    targets = backbone_targets(model)
    state = model.state_dict()
    loaded, unplaced, mismatched = {}, [], []
    for name, tensor in source.items():
        target = targets.get(name)
        if target is None:
            unplaced.append(name)
        elif tuple(state[target].shape) != tuple(tensor.shape):
            mismatched.append(f"{name} {tuple(tensor.shape)} vs {tuple(state[target].shape)}")
        else:
            loaded[target] = tensor.to(state[target].dtype)
    missing = sorted(set(targets.values()) - set(loaded))
    is_norm = lambda n: n.startswith("bn1.") or ".bn" in n or ".downsample.1." in n  # noqa: E731
    ignorable = [n for n in unplaced if model.resnet_norm == "" and is_norm(n)]
    extra = [n for n in unplaced if n not in ignorable]
    if mismatched or missing or extra:
        parts = []
        if extra:
            parts.append(f"{len(extra)} tensor(s) have no place in it: {', '.join(extra[:5])}"
                         + (" ..." if len(extra) > 5 else ""))
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {', '.join(mismatched[:5])}")
        if missing:
            parts.append(f"{len(missing)} backbone tensor(s) not in the file: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
        raise UserError(f"MODEL.WEIGHTS {path} does not fit the ResNet-{model.depth} of this config: "
                        + "; ".join(parts) + " (check MODEL.RESNETS.DEPTH and the converted checkpoint)")
    with torch.no_grad():
        for target, tensor in loaded.items():
            state[target].copy_(tensor)
    logger.info("loaded %d/%d backbone tensors from %s", len(loaded), len(targets), path)
    if ignorable:
        logger.warning("%d norm tensor(s) of %s are not used: MODEL.RESNETS.NORM is ''", len(ignorable), path)
    return len(loaded)


def _read_checkpoint(path: str) -> dict[str, Any]:
    ckpt = load_checkpoint(path, unsafe_flag=None)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of the torchvision engine (detectron2-engine checkpoints "
                        "and other files cannot be loaded here; a converted backbone must be a .pkl)")
    return ckpt


def load_model_checkpoint(model: nn.Module, path: str, strict: bool) -> dict[str, Any]:
    """Load our own full-model checkpoint (.pth); strict: every tensor must fit (eval-only and resume)."""
    ckpt = _read_checkpoint(path)
    state = model.state_dict()
    given = ckpt["model"]
    bad = sorted(k for k in given if k in state and tuple(given[k].shape) != tuple(state[k].shape))
    missing = sorted(set(state) - set(given))
    extra = sorted(set(given) - set(state))
    if strict and (bad or missing or extra):
        raise UserError(f"checkpoint {path} does not fit the model of this config ({len(missing)} missing, "
                        f"{len(extra)} unexpected, {len(bad)} of another shape, e.g. "
                        f"{(missing + extra + bad)[:3]}); use the config it was trained with")
    model.load_state_dict({k: v for k, v in given.items() if k in state and k not in bad}, strict=False)
    if bad or missing:
        logger.warning("%s: %d tensors skipped (shape), %d left at their initial values", path, len(bad),
                       len(missing))
    return ckpt


def save_checkpoint(cfg: Any, model: nn.Module, opt: torch.optim.Optimizer | None, iteration: int,
                    name: str) -> Path:
    """Atomic `name` in OUTPUT_DIR, then OUTPUT_DIR/last_checkpoint naming it (as detectron2 does)."""
    out = Path(cfg.OUTPUT_DIR)
    path = out / name
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                       "optimizer": opt.state_dict() if opt is not None else None, "iteration": iteration}, path)
    atomic_write_text(out / "last_checkpoint", name)
    return path


def last_checkpoint(cfg: Any) -> str | None:
    """The checkpoint OUTPUT_DIR/last_checkpoint names (None without the marker; UserError if it is gone)."""
    marker = Path(cfg.OUTPUT_DIR) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(cfg.OUTPUT_DIR) / marker.read_text().strip()
    if not path.is_file():
        raise UserError(f"{marker} names {path.name}, which does not exist; delete {marker} to start over")
    return str(path)


def load_initial_weights(cfg: Any, model: FasterRCNN) -> None:
    """MODEL.WEIGHTS: '' = random init, .pkl = converted backbone, otherwise our own full-model checkpoint."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        logger.info("MODEL.WEIGHTS is empty: training from random initialisation")
    elif weights.endswith(".pkl"):
        load_backbone_pkl(model, weights)
    else:
        load_model_checkpoint(model, weights, strict=False)
