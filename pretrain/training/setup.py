"""What a pretraining run settles before its loop: its output folder's name, its numeric precision (and what
bf16 on a CPU cannot compute right), and the signals that stop it (SIGTERM/SIGINT save where it is, so the
same command resumes)."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from rimifm.errors import UserError


def default_output_dir(cfg, config_name: str) -> Path:
    """outputs/pretrain/<config>[-rim][-ifm]-s<seed>: a restart with the same settings resumes."""
    tags = [Path(config_name).stem if config_name else "default"]
    if cfg.RIM.ENABLED:
        tags.append("rim")
    if cfg.IFM.ENABLED:
        tags.append("ifm")
    return Path("outputs") / "pretrain" / ("-".join(tags) + f"-s{cfg.SEED}")


def resolve_precision(cfg, device: torch.device) -> str:
    p = cfg.TRAIN.PRECISION
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise UserError("TRAIN.PRECISION fp16 needs a GPU; use fp32 or bf16 on a CPU")
    return p


def cpu_bf16_hazards(backbone: torch.nn.Module, image_size: int) -> list[str]:
    """The convolutions whose bf16 weight gradient oneDNN gets wrong on a CPU: strided, padded ones with a
    kernel over 1x1 fed a 1x1 map (layer4.0.conv1 of a ResNet with the ImageNet stem at 9-16 px, and
    layer3.0.conv1 too at 8 px or less). Measured
    with PyTorch 2.14.1: the taps that see only the padding get garbage instead of zero, non-finite in about
    half the steps; fp32, and bf16 with oneDNN off, are exact (docs/pretraining.md)."""
    found: list[str] = []

    def check(name: str):
        return lambda module, args: found.append(name) if min(args[0].shape[-2:]) == 1 else None

    hooks = [m.register_forward_pre_hook(check(name)) for name, m in backbone.named_modules()
             if isinstance(m, torch.nn.Conv2d) and max(m.stride) > 1 and max(m.kernel_size) > 1 and max(m.padding) > 0]
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device))
    finally:
        backbone.train(was_training)
        for h in hooks:
            h.remove()
    return found


class StopRequested(Exception):
    """SIGTERM/SIGINT: save where we are and exit; a restart resumes from there."""


def install_signal_handlers() -> dict:
    """SIGTERM and SIGINT raise StopRequested; returns the handlers they replace (to restore)."""
    def handler(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, handler)
    return previous


__all__ = ["StopRequested", "cpu_bf16_hazards", "default_output_dir", "install_signal_handlers", "resolve_precision"]
