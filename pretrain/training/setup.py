"""What a pretraining run settles before its loop: its output folder's name, its numeric precision, and the
signals that stop it (SIGTERM/SIGINT save where it is, so the same command resumes)."""

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


__all__ = ["StopRequested", "default_output_dir", "install_signal_handlers", "resolve_precision"]
